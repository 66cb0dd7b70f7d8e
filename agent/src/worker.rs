//! The worker process: one per card. It reads [`Request`]s on stdin and answers each with a
//! [`Reply`] on stdout, as length-prefixed postcard frames (u32 little-endian length first).
//! It owns the compute context of its card, so a sticky failure kills only this process,
//! never the supervisor.

use crate::gpu::WorkerFault;
use rigd_kernels::unit::work as unit_work;
use rigd_kernels::{CpuKernels, CudaKernels, KernelError};
use rigd_protocol::{UnitOutput, WorkUnit};
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
    /// Where to compute it.
    pub device: Device,
    /// A fault to act out on this unit (simulated cards only).
    pub fault: Option<WorkerFault>,
}

/// Where a worker computes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Device {
    /// A simulated card: CPU reference kernels, and the unit takes at least
    /// `work / gflops` seconds.
    Sim {
        /// Simulated speed, GFLOP/s.
        gflops: f64,
    },
    /// The CUDA device the worker was pinned to (`CUDA_VISIBLE_DEVICES`), through the PTX
    /// kernels.
    Cuda,
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
    /// The compute context is poisoned (a sticky CUDA error): the worker exits after this
    /// reply and must be restarted; the unit goes back to the queue.
    Sticky {
        /// The error.
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

/// A worker's state across requests: the CUDA context, created on first use.
#[derive(Default)]
pub struct Worker {
    cuda: Option<CudaKernels>,
}

impl Worker {
    /// Answers one request; `None` when the worker must exit without answering (an injected
    /// crash).
    pub fn handle(&mut self, req: &Request) -> Option<Reply> {
        let started_ms = unix_ms();
        let t0 = Instant::now();
        match req.fault {
            Some(WorkerFault::Crash) => return None,
            Some(WorkerFault::Hang) => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            Some(WorkerFault::StickyError) => {
                return Some(Reply::Sticky {
                    reason: "injected sticky error: illegal address".into(),
                })
            }
            Some(WorkerFault::WrongResult) | None => {}
        }
        if let Err(reason) = req.unit.kind.validate() {
            return Some(Reply::Failed { reason });
        }
        let output = match req.device {
            Device::Sim { .. } => rigd_kernels::unit::compute(&CpuKernels, &req.unit.kind),
            Device::Cuda => self
                .cuda()
                .and_then(|k| rigd_kernels::unit::compute(k, &req.unit.kind)),
        };
        let mut output = match output {
            Ok(o) => o,
            Err(e @ (KernelError::Device { .. } | KernelError::DriverUnavailable)) => {
                return Some(Reply::Sticky {
                    reason: e.to_string(),
                })
            }
            Err(e) => {
                return Some(Reply::Failed {
                    reason: e.to_string(),
                })
            }
        };
        if req.fault == Some(WorkerFault::WrongResult) {
            corrupt(&mut output);
        }
        let work = unit_work(&req.unit.kind);
        if let Device::Sim { gflops } = req.device {
            if gflops > 0.0 {
                let target = Duration::from_secs_f64((work as f64 / (gflops * 1e9)).min(3600.0));
                if let Some(rest) = target.checked_sub(t0.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        }
        Some(Reply::Done {
            output,
            work,
            started_ms,
            finished_ms: unix_ms(),
        })
    }

    fn cuda(&mut self) -> Result<&CudaKernels, KernelError> {
        if self.cuda.is_none() {
            self.cuda = Some(CudaKernels::new(0)?);
        }
        self.cuda.as_ref().ok_or(KernelError::DriverUnavailable)
    }
}

fn corrupt(output: &mut UnitOutput) {
    match output {
        UnitOutput::MlpGrad { loss_sum, .. } => *loss_sum += 1.0,
        UnitOutput::GemmI8 { c_digest } => c_digest[0] ^= 1,
    }
}

/// The worker process's main loop over stdin/stdout. Exits 0 when stdin closes, 1 after a
/// sticky error (its context is poisoned), 101 on an injected crash.
pub fn serve_stdio() -> ExitCode {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut worker = Worker::default();
    let holds = crate::hold::Holds::from_env();
    loop {
        match read_frame::<_, Request>(&mut input) {
            Ok(Some(req)) => {
                if holds.held(crate::hold::Point::Computing) {
                    // The worker has no log of its own: its stderr is rigd's.
                    eprintln!("rigd worker: unit {} held by a test", req.unit.unit);
                    holds.wait(crate::hold::Point::Computing);
                }
                let Some(reply) = worker.handle(&req) else {
                    eprintln!("rigd worker: injected crash");
                    return ExitCode::from(101);
                };
                let sticky = matches!(reply, Reply::Sticky { .. });
                if let Err(e) = write_frame(&mut output, &reply) {
                    eprintln!("rigd worker: cannot answer: {e}");
                    return ExitCode::from(1);
                }
                if sticky {
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
    use rigd_protocol::{JobId, UnitKind};

    fn request(m: u32, fault: Option<WorkerFault>) -> Request {
        Request {
            unit: WorkUnit {
                job: JobId::new("j").unwrap_or_else(|_| unreachable!()),
                unit: 1,
                attempt: 0,
                kind: UnitKind::GemmI8 {
                    seed: 1,
                    m,
                    n: 4,
                    k: 4,
                },
            },
            device: Device::Sim { gflops: 0.0 },
            fault,
        }
    }

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
            device: Device::Sim { gflops: 0.0 },
            fault: None,
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
        let reply = Worker::default().handle(&request(0, None));
        assert!(matches!(reply, Some(Reply::Failed { .. })));
    }

    #[test]
    fn injected_faults_are_acted_out() {
        let mut w = Worker::default();
        let good = w.handle(&request(4, None));
        let wrong = w.handle(&request(4, Some(WorkerFault::WrongResult)));
        match (good, wrong) {
            (Some(Reply::Done { output: a, .. }), Some(Reply::Done { output: b, .. })) => {
                assert_ne!(a.digest(), b.digest())
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            w.handle(&request(4, Some(WorkerFault::StickyError))),
            Some(Reply::Sticky { .. })
        ));
        assert!(w.handle(&request(4, Some(WorkerFault::Crash))).is_none());
    }

    #[test]
    fn a_cuda_request_without_a_driver_is_a_sticky_error_not_a_panic() {
        let mut req = request(4, None);
        req.device = Device::Cuda;
        assert!(matches!(
            Worker::default().handle(&req),
            Some(Reply::Sticky { .. })
        ));
    }
}
