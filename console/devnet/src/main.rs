//! `rigd-devnet`: the demo network (see `rigd-devnet --help`). `rigd-devnet worker` is one
//! card's worker, started by the demo's rigs.

use clap::Parser;
use rigd_devnet::DevnetArgs;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    limit_malloc_arenas();
    if std::env::args().nth(1).as_deref() == Some("worker") {
        return rigd::worker::serve_stdio();
    }
    let args = DevnetArgs::parse();
    // rumqttd logs every client disconnect as an error: keep it quiet unless asked. The demo
    // says once that its rigs use software keys instead of once per rig.
    rigd_client::init_logging("warn,rumqttd=off,rigd::keys=error");
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

/// glibc gives threads that allocate at once arenas of their own (up to 8 per core) and keeps
/// freed memory in each. With the broker's, the coordinator's and every rig's threads in one
/// process, the demo's RSS crept up by about 1.6 MB a minute while its live heap stayed flat
/// (heaptrack: 23.9 MB after 150 s, 21.8 MB after 600 s). Two arenas keep it near the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; it runs first in main, before any
    // other thread exists, and its result (1 on success) only says whether it took.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
