//! `fuzz-frames`: reads one input on stdin and runs the fuzz target on it (what `afl-fuzz`
//! executes; see `run.sh`). `fuzz-frames --seeds DIR` writes the seed inputs into DIR.
//! A panic aborts the process so that AFL++ sees a crash.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{info}");
        std::process::abort();
    }));
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--seeds") {
        let Some(dir) = args.next() else {
            eprintln!("usage: fuzz-frames --seeds DIR");
            return ExitCode::from(2);
        };
        for (i, seed) in rigd_protocol_fuzz::seeds().iter().enumerate() {
            if let Err(e) = std::fs::write(format!("{dir}/seed-{i:03}"), seed) {
                eprintln!("cannot write a seed into {dir}: {e}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    let mut data = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut data) {
        eprintln!("cannot read stdin: {e}");
        return ExitCode::from(1);
    }
    rigd_protocol_fuzz::frames(&data);
    ExitCode::SUCCESS
}
