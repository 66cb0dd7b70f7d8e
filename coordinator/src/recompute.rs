//! Recomputation off the engine's thread. The engine names the results of a batch it wants
//! recomputed ([`Recompute`]); a [`Pool`] of threads computes them with the CPU reference
//! kernels, one unit at a time and in turn across rigs, and hands each batch's outputs back
//! whole ([`Recomputed`]). A rig that sends many costly units waits behind its own queue: an
//! honest rig's unit waits for at most one unit of each other rig per thread.

use crate::verify;
use rigd_protocol::{RigId, UnitKind, UnitOutput};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use tokio::sync::mpsc;

/// The results of one batch to recompute, in the batch's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Recompute {
    /// Names the batch waiting for these results.
    pub ticket: u64,
    /// The rig that sent it (the pool's turns are per rig).
    pub rig: RigId,
    /// The units, as they were assigned.
    pub units: Vec<UnitKind>,
}

/// What recomputing a [`Recompute`] gave, one output per unit; `None` where the kernel
/// failed (the result is then judged wrong).
#[derive(Debug, Clone, PartialEq)]
pub struct Recomputed {
    /// The ticket of the [`Recompute`].
    pub ticket: u64,
    /// Outputs in the order of its units.
    pub outputs: Vec<Option<UnitOutput>>,
}

fn compute(kind: &UnitKind) -> Option<UnitOutput> {
    verify::recompute(kind)
        .map_err(|e| tracing::error!(error = %e, "recomputation failed"))
        .ok()
}

impl Recompute {
    /// Computes every unit on the calling thread (tests, and a pool of none).
    pub fn run(&self) -> Recomputed {
        Recomputed {
            ticket: self.ticket,
            outputs: self.units.iter().map(compute).collect(),
        }
    }
}

struct Partial {
    outputs: Vec<Option<UnitOutput>>,
    left: usize,
}

#[derive(Default)]
struct Queue {
    /// Rigs with units waiting, in turn order.
    turns: VecDeque<RigId>,
    waiting: HashMap<RigId, VecDeque<(u64, usize, UnitKind)>>,
    partial: HashMap<u64, Partial>,
    closed: bool,
}

impl Queue {
    /// The next unit to compute: the front unit of the rig whose turn it is.
    fn next(&mut self) -> Option<(u64, usize, UnitKind)> {
        let rig = self.turns.pop_front()?;
        let units = self.waiting.get_mut(&rig)?;
        let task = units.pop_front();
        if units.is_empty() {
            self.waiting.remove(&rig);
        } else {
            self.turns.push_back(rig);
        }
        task
    }

    /// Stores one output; returns the batch's outputs once it has them all.
    fn finish(&mut self, ticket: u64, index: usize, out: Option<UnitOutput>) -> Option<Recomputed> {
        let partial = self.partial.get_mut(&ticket)?;
        if let Some(slot) = partial.outputs.get_mut(index) {
            *slot = out;
        }
        partial.left = partial.left.saturating_sub(1);
        if partial.left > 0 {
            return None;
        }
        self.partial.remove(&ticket).map(|p| Recomputed {
            ticket,
            outputs: p.outputs,
        })
    }
}

type Shared = Arc<(Mutex<Queue>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Queue> {
    shared.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Threads that recompute units in turn across rigs and send each finished batch to `done`.
pub struct Pool {
    shared: Shared,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Pool {
    /// Starts `threads` threads (at least one).
    pub fn start(threads: usize, done: mpsc::UnboundedSender<Recomputed>) -> std::io::Result<Self> {
        let shared: Shared = Arc::default();
        let threads = (0..threads.max(1))
            .map(|i| {
                let (shared, done) = (shared.clone(), done.clone());
                std::thread::Builder::new()
                    .name(format!("recompute-{i}"))
                    .spawn(move || work(&shared, &done))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { shared, threads })
    }

    /// Batches queued or being recomputed, not yet sent back.
    pub fn in_progress(&self) -> usize {
        lock(&self.shared).partial.len()
    }

    /// Queues a batch's units behind those of the same rig.
    pub fn submit(&self, job: Recompute) {
        let mut q = lock(&self.shared);
        if job.units.is_empty() {
            drop(q);
            tracing::error!(ticket = job.ticket, "empty recompute request ignored");
            return;
        }
        q.partial.insert(
            job.ticket,
            Partial {
                outputs: vec![None; job.units.len()],
                left: job.units.len(),
            },
        );
        if !q.waiting.contains_key(&job.rig) {
            q.turns.push_back(job.rig.clone());
        }
        let units = q.waiting.entry(job.rig).or_default();
        units.extend(
            job.units
                .into_iter()
                .enumerate()
                .map(|(i, kind)| (job.ticket, i, kind)),
        );
        drop(q);
        self.shared.1.notify_one();
    }
}

fn work(shared: &Shared, done: &mpsc::UnboundedSender<Recomputed>) {
    loop {
        let task = {
            let mut q = lock(shared);
            loop {
                if q.closed {
                    return;
                }
                if let Some(task) = q.next() {
                    break task;
                }
                q = shared.1.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let (ticket, index, kind) = task;
        let out = compute(&kind);
        let finished = lock(shared).finish(ticket, index, out);
        if let Some(r) = finished {
            if done.send(r).is_err() {
                return;
            }
        }
    }
}

impl Drop for Pool {
    /// Stops the threads; each finishes the unit it is computing.
    fn drop(&mut self) {
        lock(&self.shared).closed = true;
        self.shared.1.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a recompute thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigd_testkit::fixtures::rig_id;

    fn gemm(seed: u64) -> UnitKind {
        UnitKind::GemmI8 {
            m: 8,
            n: 8,
            k: 8,
            seed,
        }
    }

    /// Turns go round the rigs one unit at a time: a rig with one unit queued behind a rig
    /// with many is served second, not last.
    #[test]
    fn units_are_taken_in_turn_across_rigs() {
        let mut q = Queue::default();
        for (rig, ticket, n) in [("rig-flood", 1, 5), ("rig-h", 2, 1)] {
            q.partial.insert(
                ticket,
                Partial {
                    outputs: vec![None; n],
                    left: n,
                },
            );
            q.turns.push_back(rig_id(rig));
            q.waiting.insert(
                rig_id(rig),
                (0..n).map(|i| (ticket, i, gemm(i as u64))).collect(),
            );
        }
        let order: Vec<u64> = std::iter::from_fn(|| q.next().map(|t| t.0)).collect();
        assert_eq!(order, vec![1, 2, 1, 1, 1, 1]);
    }

    /// The pool hands back each batch whole, its outputs in the batch's order, equal to
    /// computing them in place.
    #[tokio::test]
    async fn the_pool_returns_each_batch_whole_and_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pool = Pool::start(2, tx).unwrap_or_else(|e| panic!("{e}"));
        let jobs: Vec<Recompute> = (0..3)
            .map(|t| Recompute {
                ticket: t,
                rig: rig_id(if t == 0 { "rig-a" } else { "rig-b" }),
                units: (0..4).map(|s| gemm(t * 10 + s)).collect(),
            })
            .collect();
        for j in &jobs {
            pool.submit(j.clone());
        }
        let mut got = vec![];
        for _ in 0..3 {
            got.extend(rx.recv().await);
        }
        got.sort_by_key(|r| r.ticket);
        let want: Vec<Recomputed> = jobs.iter().map(Recompute::run).collect();
        assert_eq!(got, want);
        assert!(got.iter().all(|r| r.outputs.iter().all(Option::is_some)));
    }
}
