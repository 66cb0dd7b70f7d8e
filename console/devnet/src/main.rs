//! `rigd-devnet`: the demo network (see `rigd-devnet --help`). `rigd-devnet worker` is one
//! card's worker, started by the demo's rigs.

use clap::Parser;
use rigd_devnet::DevnetArgs;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("worker") {
        return rigd::worker::serve_stdio();
    }
    let args = DevnetArgs::parse();
    // rumqttd logs every client disconnect as an error: keep it quiet unless asked. The demo
    // says once that its rigs use software keys instead of once per rig.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,rumqttd=off,rigd::keys=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rigd-devnet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(rigd_devnet::run(&args));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("rigd-devnet: {e}");
            ExitCode::FAILURE
        }
    }
}
