//! The worker process: one per card. It reads [`Request`]s on stdin and answers each with a
//! [`Reply`] on stdout, as length-prefixed postcard frames (u32 little-endian length first).
//! It owns the compute context of its card, so a sticky failure kills only this process,
//! never the supervisor.

use rigd_kernels::unit::work as unit_work;
use rigd_kernels::CpuKernels;
use rigd_protocol::{UnitKind, UnitOutput, WorkUnit};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest frame either side accepts (an MLP gradient of the largest allowed model).
pub const MAX_WORKER_FRAME: usize = 32 << 20;

/// Supervisor -> worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The unit to compute.
    pub unit: WorkUnit,
    /// Simulated card speed: the unit takes at least `work / sim_gflops` (sim cards only).
    pub sim_gflops: Option<f64>,
}

/// Worker -> supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// The unit is done.
    Done {
        /// The result.
        output: UnitOutput,
        /// Work done, FLOPs.
        work: u64,
        /// Start, Unix ms.
        started_ms: u64,
        /// End, Unix ms.
        finished_ms: u64,
    },
    /// The unit could not be computed (bad input); the worker is still healthy.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Unix time now, ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Computes a unit with the CPU reference kernels.
pub fn compute(kind: &UnitKind) -> Result<UnitOutput, String> {
    kind.validate()?;
    rigd_kernels::unit::compute(&CpuKernels, kind).map_err(|e| e.to_string())
}

/// Writes one length-prefixed frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let body = postcard::to_allocvec(msg).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Reads one length-prefixed frame; `Ok(None)` at a clean end of input.
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_WORKER_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes over the {MAX_WORKER_FRAME}-byte cap"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Answers one request: computes it and, on a sim card, waits out the simulated duration.
pub fn handle(req: &Request) -> Reply {
    let started_ms = unix_ms();
    let t0 = Instant::now();
    match compute(&req.unit.kind) {
        Ok(output) => {
            let work = unit_work(&req.unit.kind);
            if let Some(gflops) = req.sim_gflops.filter(|g| *g > 0.0) {
                let target = Duration::from_secs_f64((work as f64 / (gflops * 1e9)).min(3600.0));
                if let Some(rest) = target.checked_sub(t0.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            Reply::Done {
                output,
                work,
                started_ms,
                finished_ms: unix_ms(),
            }
        }
        Err(reason) => Reply::Failed { reason },
    }
}

/// The worker process's main loop over stdin/stdout. Exits 0 when stdin closes.
pub fn serve_stdio() -> ExitCode {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    loop {
        match read_frame::<_, Request>(&mut input) {
            Ok(Some(req)) => {
                if let Err(e) = write_frame(&mut output, &handle(&req)) {
                    eprintln!("rigd worker: cannot answer: {e}");
                    return ExitCode::from(1);
                }
            }
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rigd worker: bad request: {e}");
                return ExitCode::from(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigd_protocol::JobId;

    #[test]
    fn frames_round_trip_and_oversized_lengths_are_refused() {
        let req = Request {
            unit: WorkUnit {
                job: JobId::new("j").unwrap_or_else(|_| unreachable!()),
                unit: 3,
                attempt: 1,
                kind: UnitKind::GemmI8 {
                    seed: 1,
                    m: 4,
                    n: 4,
                    k: 4,
                },
            },
            sim_gflops: None,
        };
        let mut buf = vec![];
        write_frame(&mut buf, &req).unwrap_or_else(|e| panic!("{e}"));
        let back: Option<Request> =
            read_frame(&mut buf.as_slice()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.map(|r| r.unit), Some(req.unit));
        let huge = (MAX_WORKER_FRAME as u32 + 1).to_le_bytes();
        assert!(read_frame::<_, Request>(&mut huge.as_slice()).is_err());
        let truncated = [10u8, 0, 0, 0, 1, 2];
        assert!(read_frame::<_, Request>(&mut truncated.as_slice()).is_err());
        assert!(matches!(
            read_frame::<_, Request>(&mut [].as_slice()),
            Ok(None)
        ));
    }

    #[test]
    fn an_invalid_unit_fails_without_killing_the_worker() {
        let reply = handle(&Request {
            unit: WorkUnit {
                job: JobId::new("j").unwrap_or_else(|_| unreachable!()),
                unit: 1,
                attempt: 0,
                kind: UnitKind::GemmI8 {
                    seed: 1,
                    m: 0,
                    n: 4,
                    k: 4,
                },
            },
            sim_gflops: None,
        });
        assert!(matches!(reply, Reply::Failed { .. }));
    }
}
