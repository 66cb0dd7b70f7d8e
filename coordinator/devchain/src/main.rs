//! `rigd-devchain`: a local Ethereum dev chain on revm, serving JSON-RPC over HTTP until
//! SIGINT or SIGTERM. Prints `listening on http://ADDR` on stdout once it takes connections.
//!
//! Exit codes: 0 after a clean shutdown, 2 for a configuration error, 1 at run time.

use alloy_primitives::{Address, U256};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use clap::Parser;
use rigd_devchain::{DevChain, MAX_REQUEST};
use rigd_httpd::{Front, HttpArgs};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A local Ethereum dev chain (one transaction per block, state in memory) for tests and
/// demos.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve JSON-RPC on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8545")]
    listen: SocketAddr,
    /// The chain id.
    #[arg(long, default_value_t = 31337)]
    chain_id: u64,
    /// An account given 1,000,000 ether at genesis; repeatable.
    #[arg(long = "fund")]
    funded: Vec<Address>,
    #[command(flatten)]
    http: HttpArgs,
}

/// A request for the chain's thread, and where its answer goes.
type Call = (Bytes, oneshot::Sender<serde_json::Value>);

async fn rpc(State(chain): State<mpsc::Sender<Call>>, body: Bytes) -> impl IntoResponse {
    let (tx, rx) = oneshot::channel();
    let answer = match chain.send((body, tx)) {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    let answer = answer.unwrap_or_else(|| {
        serde_json::json!({"jsonrpc": "2.0", "id": null,
            "error": {"code": -32603, "message": "the chain stopped"}})
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
}

async fn run((args, front): (Args, Front), stop: CancellationToken) -> anyhow::Result<()> {
    let ether = U256::from(10u64).pow(U256::from(18u64));
    let funded: Vec<(Address, U256)> = args
        .funded
        .iter()
        .map(|a| (*a, ether * U256::from(1_000_000u64)))
        .collect();
    let chain_id = args.chain_id;
    let genesis_s = rigd_client::unix_ms() / 1000;
    // The EVM is not Send: it lives on a thread of its own, which answers calls in order.
    let (calls, inbox) = mpsc::channel::<Call>();
    std::thread::Builder::new()
        .name("chain".into())
        .spawn(move || {
            let mut chain = DevChain::new(chain_id, &funded, genesis_s);
            for (body, reply) in inbox {
                let _ = reply.send(chain.answer(&body));
            }
        })?;
    let router = Router::new()
        .route("/", post(rpc))
        .layer(DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(calls);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, chain_id = args.chain_id, "serving JSON-RPC");
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{bound}")?;
    out.flush()?;
    rigd_httpd::serve(listener, router, front, stop).await;
    Ok(())
}

fn main() -> ExitCode {
    rigd_client::init_logging("info");
    let args = Args::parse();
    let config = args.http.front().map(|front| (args, front));
    rigd_client::daemon_main("devchain", config, run)
}
