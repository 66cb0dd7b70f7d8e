//! One task per card, each driving that card's worker process.
//!
//! The task spawns the worker on demand (pinned to its card through the environment), sends
//! it one unit at a time and waits for the answer within a deadline. A worker that exits,
//! answers garbage, reports a sticky error or stays silent past the deadline is killed; the
//! unit goes back to the supervisor to be queued again, and the worker is restarted with
//! exponential backoff. The supervisor can also abort a running unit (thermal pause,
//! quarantine): the worker is killed and the unit handed back.

use crate::gpu::WorkerFault;
use crate::journal::Completion;
use crate::worker::{Device, Reply, Request, MAX_WORKER_FRAME};
use rigd_kernels::unit::work as unit_work;
use rigd_protocol::{GpuUuid, WorkUnit};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// A unit handed to a card.
#[derive(Debug, Clone)]
pub struct Job {
    /// The unit.
    pub unit: WorkUnit,
    /// A fault the worker should act out (simulated cards only).
    pub fault: Option<WorkerFault>,
    /// The governor level the card runs at, for the receipt.
    pub governor_level: u8,
    /// Kill the card's idle worker first, so the unit runs on a fresh one.
    pub fresh_worker: bool,
}

/// What a card task reports to the supervisor.
#[derive(Debug)]
pub enum CardEvent {
    /// A unit finished.
    Done {
        /// Card index.
        card: usize,
        /// The result.
        completion: Box<Completion>,
    },
    /// The worker refused the unit as invalid; the worker itself is fine.
    Refused {
        /// Card index.
        card: usize,
        /// The unit.
        unit: WorkUnit,
        /// Why.
        reason: String,
    },
    /// The worker died, hung or reported a sticky error with the unit; it is restarted.
    Crashed {
        /// Card index.
        card: usize,
        /// The unit it held.
        unit: WorkUnit,
        /// What happened.
        reason: String,
    },
    /// The supervisor aborted the unit; the worker was stopped.
    Aborted {
        /// Card index.
        card: usize,
        /// The unit it held.
        unit: WorkUnit,
    },
}

/// Settings of one card task.
#[derive(Debug, Clone)]
pub struct CardSettings {
    /// Card index on the rig.
    pub index: usize,
    /// Card UUID (exported to the worker as `CUDA_VISIBLE_DEVICES`).
    pub uuid: GpuUuid,
    /// Worker executable.
    pub command: WorkerCommand,
    /// Where the worker computes.
    pub device: Device,
    /// Extra time allowed past a unit's expected duration before the worker counts as hung.
    pub hang_ms: u64,
}

/// The supervisor's end of a card task.
#[derive(Debug, Clone)]
pub struct CardHandle {
    /// Units for the card, one at a time.
    pub jobs: mpsc::Sender<Job>,
    /// Asks the task to abort its running unit (a request left over from a unit that has
    /// since finished is dropped when the next unit starts).
    pub abort: mpsc::Sender<()>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Worker {
    fn spawn(s: &CardSettings) -> std::io::Result<Self> {
        let mut command = Command::new(&s.command.program);
        inherit_no_descriptors(&mut command);
        let mut child = command
            .args(&s.command.args)
            .env("CUDA_VISIBLE_DEVICES", s.uuid.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C meant for rigd reaches rigd only, which then
            // drains the worker instead of losing it mid-unit.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    async fn call(&mut self, req: &Request) -> std::io::Result<Reply> {
        let body = postcard::to_allocvec(req).map_err(std::io::Error::other)?;
        let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
        self.stdin.write_all(&len.to_le_bytes()).await?;
        self.stdin.write_all(&body).await?;
        self.stdin.flush().await?;
        let mut len = [0u8; 4];
        self.stdout.read_exact(&mut len).await?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_WORKER_FRAME {
            return Err(std::io::Error::other(format!(
                "reply of {len} bytes over the cap"
            )));
        }
        let mut body = vec![0u8; len];
        self.stdout.read_exact(&mut body).await?;
        postcard::from_bytes(&body).map_err(std::io::Error::other)
    }

    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The child gets only stdin, stdout and stderr. Descriptors opened by C libraries inside
/// rigd lack close-on-exec: the TPM's TSS opens its swtpm or TPM socket that way, and a
/// worker spawned while a signature was in flight would keep that connection open after
/// rigd dropped it; swtpm, serving one connection at a time, would then wait on it for good
/// and every later signature would hang.
#[allow(unsafe_code)]
fn inherit_no_descriptors(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and makes one system call,
    // which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            // Marks (not closes) every descriptor from 3 up close-on-exec, so that the
            // standard library's own exec-error pipe keeps working until exec.
            let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_int;
            if libc::close_range(3, libc::c_uint::MAX, flags) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Backoff before the `n`th consecutive restart: 200 ms doubling, at most 10 s.
pub fn restart_backoff(n: u32) -> Duration {
    Duration::from_millis((200u64 << n.min(6)).min(10_000))
}

enum Outcome {
    Reply(std::io::Result<Reply>),
    Silent,
    Aborted,
}

/// Runs a card: takes jobs, reports on `events`, until the job channel closes.
pub async fn run_card(
    s: CardSettings,
    mut jobs: mpsc::Receiver<Job>,
    mut abort: mpsc::Receiver<()>,
    events: mpsc::Sender<CardEvent>,
    stop: CancellationToken,
) {
    let mut worker: Option<Worker> = None;
    let mut failures: u32 = 0;
    while let Some(job) = jobs.recv().await {
        while abort.try_recv().is_ok() {}
        if job.fresh_worker {
            if let Some(w) = worker.take() {
                tracing::info!(gpu = %s.uuid, pid = ?w.child.id(), "worker restarted on request");
                w.kill().await;
            }
        }
        let mut w = match worker.take() {
            Some(w) => w,
            None => match Worker::spawn(&s) {
                Ok(w) => {
                    tracing::info!(gpu = %s.uuid, pid = ?w.child.id(), "worker started");
                    w
                }
                Err(e) => {
                    failures += 1;
                    let reason = format!("cannot start worker: {e}");
                    let _ = events
                        .send(CardEvent::Crashed {
                            card: s.index,
                            unit: job.unit,
                            reason,
                        })
                        .await;
                    backoff(&stop, failures).await;
                    continue;
                }
            },
        };
        let expected_ms = match s.device {
            Device::Sim { gflops } if gflops > 0.0 => {
                (unit_work(&job.unit.kind) as f64 / (gflops * 1e6)) as u64
            }
            _ => 0,
        };
        let deadline = Duration::from_millis(expected_ms.saturating_add(s.hang_ms));
        let req = Request {
            unit: job.unit.clone(),
            device: s.device,
            fault: job.fault,
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(deadline, w.call(&req)) => match r {
                Ok(reply) => Outcome::Reply(reply),
                Err(_) => Outcome::Silent,
            },
            Some(()) = abort.recv() => Outcome::Aborted,
        };
        let unit = job.unit;
        let event = match outcome {
            Outcome::Reply(Ok(Reply::Done {
                output,
                work,
                started_ms,
                finished_ms,
            })) => {
                failures = 0;
                worker = Some(w);
                CardEvent::Done {
                    card: s.index,
                    completion: Box::new(Completion {
                        unit,
                        card: s.uuid.clone(),
                        output,
                        work,
                        started_ms,
                        finished_ms,
                        governor_level: job.governor_level,
                    }),
                }
            }
            Outcome::Reply(Ok(Reply::Failed { reason })) => {
                worker = Some(w);
                CardEvent::Refused {
                    card: s.index,
                    unit,
                    reason,
                }
            }
            Outcome::Aborted => {
                w.kill().await;
                CardEvent::Aborted {
                    card: s.index,
                    unit,
                }
            }
            failed => {
                let reason = match failed {
                    Outcome::Reply(Ok(Reply::Sticky { reason })) => {
                        format!("sticky error: {reason}")
                    }
                    Outcome::Reply(Err(e)) => format!("worker failed: {e}"),
                    _ => format!("worker silent for {} ms", deadline.as_millis()),
                };
                w.kill().await;
                failures += 1;
                let _ = events
                    .send(CardEvent::Crashed {
                        card: s.index,
                        unit,
                        reason,
                    })
                    .await;
                backoff(&stop, failures).await;
                continue;
            }
        };
        let _ = events.send(event).await;
    }
    if let Some(w) = worker {
        w.kill().await;
    }
}

async fn backoff(stop: &CancellationToken, failures: u32) {
    tokio::select! {
        _ = tokio::time::sleep(restart_backoff(failures.saturating_sub(1))) => {}
        _ = stop.cancelled() => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_doubles_and_is_capped() {
        assert_eq!(restart_backoff(0), Duration::from_millis(200));
        assert_eq!(restart_backoff(1), Duration::from_millis(400));
        assert_eq!(restart_backoff(30), Duration::from_millis(10_000));
    }

    /// Clears close-on-exec on `fd`, as C libraries leave their descriptors; returns the flags.
    #[allow(unsafe_code)]
    fn clear_cloexec(fd: std::os::fd::RawFd) -> libc::c_int {
        // SAFETY: fcntl on a descriptor this test owns, with integer arguments only.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, 0);
            libc::fcntl(fd, libc::F_GETFD)
        }
    }

    /// Descriptors of rigd that are not close-on-exec (as the TSS opens its sockets) do not
    /// reach a worker.
    #[tokio::test]
    async fn a_worker_inherits_no_descriptor_of_rigd() {
        let inheritable = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&inheritable);
        assert_eq!(
            clear_cloexec(fd) & libc::FD_CLOEXEC,
            0,
            "the descriptor is inheritable"
        );
        // Whether a shell spawned with (or without) the guard still has `fd` open.
        let child_sees = |guarded: bool| async move {
            let mut command = Command::new("/bin/sh");
            if guarded {
                inherit_no_descriptors(&mut command);
            }
            let probe = format!("test -e /proc/self/fd/{fd} && echo held || echo gone");
            let out = command.args(["-c", &probe]).output().await.unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(child_sees(true).await, "gone");
        assert_eq!(
            child_sees(false).await,
            "held",
            "without the guard the descriptor is inherited, so the check above can fail"
        );
    }
}
