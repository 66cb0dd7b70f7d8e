//! A deadline on every call into a key store, and a fresh connection after a failure.
//!
//! A TPM, a PKCS#11 token or a YubiHSM2 on USB can stop answering: a signature that never
//! returns would hold the signing thread forever, with receipts journaled but never signed.
//! [`GuardedKey`] runs the key store on a thread of its own (one per connection: TCTI context,
//! PKCS#11 session, HSM connector) and waits for each answer at most its deadline. A call that
//! fails or passes the deadline drops the connection; the next call after a backoff
//! ([`Timing`]: 1 s doubling to 30 s in rigd) opens a new one, checks that it holds the same
//! key, and signs again. The caller (the batcher) retries, so receipts stay journaled
//! meanwhile and are signed once the store answers.
//!
//! A thread stuck in a call cannot be stopped from outside; it is abandoned and ends once the
//! call returns (closing its connection). At most [`MAX_THREADS`] connection threads exist at
//! once, so a store that never answers costs a bounded number of threads.

use super::{KeyError, KeyStore};
use rigd_protocol::digest::Hash32;
use rigd_protocol::{KeyHealth, PublicKey, Signature};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Opens a connection to the key store (on the connection's own thread).
pub type Opener = Box<dyn Fn() -> Result<Box<dyn KeyStore>, KeyError> + Send + Sync>;

/// The most connection threads alive at once, abandoned ones included.
pub const MAX_THREADS: usize = 4;

/// How long calls may take and how long to wait before reopening a failed key store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The longest any one call (open, sign, attest) may take.
    pub deadline: Duration,
    /// The wait before the first reopen after a failure; it doubles with every failure in a
    /// row, up to `max_backoff`.
    pub first_backoff: Duration,
    /// The longest wait before a reopen.
    pub max_backoff: Duration,
}

impl Timing {
    /// `deadline` per call, reopening after 1 s doubling to 30 s.
    pub fn with_deadline(deadline: Duration) -> Self {
        Self {
            deadline,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A call for the connection's thread.
enum Call {
    Sign(Hash32, SyncSender<Result<Signature, KeyError>>),
    Attest(SyncSender<Result<Vec<(&'static str, String)>, KeyError>>),
}

/// A key store behind a per-call deadline, reopened after a failure.
pub struct GuardedKey {
    open: Arc<Opener>,
    timing: Timing,
    public: PublicKey,
    described: String,
    /// Connection threads alive (serving or abandoned).
    threads: Arc<AtomicUsize>,
    state: Mutex<State>,
    /// Held while a new connection is opened, so that two callers open one.
    opening: Mutex<()>,
}

struct State {
    /// The connection in use and its number.
    conn: Option<(u64, Sender<Call>)>,
    opened: u64,
    /// Failures in a row, and when the first of them happened (Unix ms).
    failures: u32,
    down_since_ms: u64,
    reason: String,
    /// No reopen before this.
    retry_at: Option<Instant>,
}

/// Counts a connection thread while it lives.
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GuardedKey {
    /// Opens the key store with `open` on a connection thread, waiting at most the deadline
    /// of `timing`, which bounds every later call too.
    pub fn open(open: Opener, timing: Timing) -> Result<Self, KeyError> {
        let open = Arc::new(open);
        let threads = Arc::new(AtomicUsize::new(0));
        let (tx, public, described) = connect(&open, &threads, timing.deadline)?;
        Ok(Self {
            open,
            timing,
            public,
            described,
            threads,
            state: Mutex::new(State {
                conn: Some((1, tx)),
                opened: 1,
                failures: 0,
                down_since_ms: 0,
                reason: String::new(),
                retry_at: None,
            }),
            opening: Mutex::new(()),
        })
    }

    /// Connection threads alive now, abandoned ones included.
    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::SeqCst)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection to use, opening a new one when the last failed and its backoff passed.
    fn connection(&self) -> Result<(u64, Sender<Call>), KeyError> {
        let _one = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.state();
        if let Some(conn) = &state.conn {
            return Ok(conn.clone());
        }
        let now = Instant::now();
        if let Some(at) = state.retry_at.filter(|at| *at > now) {
            return Err(KeyError::Backoff {
                retry_in_ms: u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX),
                reason: state.reason.clone(),
            });
        }
        let alive = self.threads();
        if alive >= MAX_THREADS {
            let reason = format!(
                "{alive} calls to the key store have not returned; a new connection waits for one of them"
            );
            drop(state);
            return Err(self.failed(None, reason));
        }
        drop(state);
        tracing::info!(key = %self.described, "reopening the key store");
        match connect(&self.open, &self.threads, self.timing.deadline) {
            Ok((tx, public, _)) if public == self.public => {
                let mut state = self.state();
                state.opened += 1;
                let conn = (state.opened, tx);
                state.conn = Some(conn.clone());
                Ok(conn)
            }
            Ok((_, public, _)) => Err(self.failed(
                None,
                format!(
                    "the key store now holds another key ({public}) than rigd started with ({}); restart rigd to take it as the rig's identity",
                    self.public
                ),
            )),
            Err(e) => Err(self.failed(None, e.to_string())),
        }
    }

    /// Records a failure of connection `conn` (of the reopen when `None`): drops the
    /// connection, sets the backoff and returns the error for the caller.
    fn failed(&self, conn: Option<u64>, reason: String) -> KeyError {
        let mut state = self.state();
        if conn.is_some() && state.conn.as_ref().map(|c| c.0) != conn {
            // A connection already replaced: its late failure says nothing about the new one.
            return KeyError::Sign(reason);
        }
        state.conn = None;
        if state.failures == 0 {
            state.down_since_ms = crate::worker::unix_ms();
        }
        state.failures = state.failures.saturating_add(1);
        let backoff = self
            .timing
            .first_backoff
            .saturating_mul(1 << (state.failures - 1).min(16))
            .min(self.timing.max_backoff);
        state.retry_at = Some(Instant::now() + backoff);
        state.reason = rigd_protocol::clip(&reason, rigd_protocol::MAX_TEXT);
        tracing::warn!(
            key = %self.described,
            failures = state.failures,
            retry_in_ms = backoff.as_millis() as u64,
            threads = self.threads(),
            %reason,
            "the key store failed; its connection is dropped and reopened"
        );
        KeyError::Sign(reason)
    }

    fn answered(&self) {
        let mut state = self.state();
        if state.failures > 0 {
            let down_ms = crate::worker::unix_ms().saturating_sub(state.down_since_ms);
            tracing::info!(key = %self.described, failures = state.failures, down_ms, "the key store answers again");
            state.failures = 0;
            state.retry_at = None;
        }
    }

    /// Sends `call` on a connection and waits for its answer at most the deadline.
    fn call<T>(
        &self,
        what: &str,
        call: impl FnOnce(SyncSender<Result<T, KeyError>>) -> Call,
    ) -> Result<T, KeyError> {
        let (id, tx) = self.connection()?;
        let (reply, answer) = mpsc::sync_channel(1);
        if tx.send(call(reply)).is_err() {
            return Err(self.failed(Some(id), "the key store's connection ended".into()));
        }
        match answer.recv_timeout(self.timing.deadline) {
            Ok(Ok(value)) => {
                self.answered();
                Ok(value)
            }
            Ok(Err(e)) => Err(self.failed(Some(id), e.to_string())),
            Err(RecvTimeoutError::Timeout) => {
                let ms = self.timing.deadline.as_millis();
                Err(self.failed(
                    Some(id),
                    format!("the key store did not answer a {what} within {ms} ms"),
                ))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.failed(
                Some(id),
                format!("the key store's connection ended during a {what}"),
            )),
        }
    }
}

/// Starts a connection thread, opens the key store on it and waits for that at most
/// `deadline`.
fn connect(
    open: &Arc<Opener>,
    threads: &Arc<AtomicUsize>,
    deadline: Duration,
) -> Result<(Sender<Call>, PublicKey, String), KeyError> {
    let (calls, inbox) = mpsc::channel();
    let (ready, opened) = mpsc::sync_channel(1);
    threads.fetch_add(1, Ordering::SeqCst);
    let alive = Alive(threads.clone());
    let open = open.clone();
    let spawned = std::thread::Builder::new()
        .name("rigd-key".into())
        .spawn(move || serve(&alive, &open, &ready, &inbox));
    if let Err(e) = spawned {
        return Err(KeyError::Unavailable {
            store: "key store".into(),
            reason: format!("cannot start its thread: {e}"),
        });
    }
    match opened.recv_timeout(deadline) {
        Ok(Ok((public, described))) => Ok((calls, public, described)),
        Ok(Err(e)) => Err(e),
        Err(RecvTimeoutError::Timeout) => Err(KeyError::Unavailable {
            store: "key store".into(),
            reason: format!(
                "opening it did not finish within {} ms",
                deadline.as_millis()
            ),
        }),
        Err(RecvTimeoutError::Disconnected) => Err(KeyError::Unavailable {
            store: "key store".into(),
            reason: "its thread ended while opening it".into(),
        }),
    }
}

/// A connection thread: opens the store, then answers calls until its sender is dropped.
fn serve(
    _alive: &Alive,
    open: &Opener,
    ready: &SyncSender<Result<(PublicKey, String), KeyError>>,
    inbox: &Receiver<Call>,
) {
    let key = match open() {
        Ok(key) => key,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok((key.public_key(), key.describe()))).is_err() {
        return;
    }
    while let Ok(call) = inbox.recv() {
        // A caller that gave up no longer listens; its answer is dropped.
        match call {
            Call::Sign(digest, reply) => {
                let _ = reply.send(key.sign_digest(&digest));
            }
            Call::Attest(reply) => {
                let _ = reply.send(key.attest());
            }
        }
    }
}

impl KeyStore for GuardedKey {
    fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    fn sign_digest(&self, digest: &Hash32) -> Result<Signature, KeyError> {
        self.call("signature", |reply| Call::Sign(*digest, reply))
    }

    fn describe(&self) -> String {
        self.described.clone()
    }

    fn attest(&self) -> Result<Vec<(&'static str, String)>, KeyError> {
        self.call("attestation", Call::Attest)
    }

    fn health(&self) -> KeyHealth {
        let state = self.state();
        if state.failures == 0 {
            KeyHealth::Answering
        } else {
            KeyHealth::Unresponsive {
                since_ms: state.down_since_ms,
                failures: state.failures,
                reason: state.reason.clone(),
            }
        }
    }
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
