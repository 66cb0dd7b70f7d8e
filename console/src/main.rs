//! `rigctl`: the console's entry point. Exit codes are listed in `rigctl --help`.

use anyhow::Context;
use clap::Parser;
use rigctl::cli::Cli;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let cli = Cli::parse();
    rigd_client::init_logging("warn");
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
