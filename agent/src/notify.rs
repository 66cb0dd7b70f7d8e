//! systemd service notifications (`sd_notify`): `READY=1` once the supervisor runs, a one-line
//! `STATUS=`, `WATCHDOG=1` from the supervisor's loop, `STOPPING=1` when a drain starts.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing. Worker processes inherit the
//! socket's variable but systemd only listens to the main process (`NotifyAccess=main`).

use rigd_protocol::{KeyHealth, RigStatus};
use sd_notify::NotifyState;
use std::path::PathBuf;
use std::time::Duration;

/// Test-only hook: while the file this variable names exists, the supervisor's loop blocks at
/// its next watchdog ping, as a stuck loop would. The systemd tests use it to see the watchdog
/// kill and restart rigd; nothing else sets it.
pub const TEST_HANG_FILE_ENV: &str = "RIGD_TEST_HANG_FILE";

/// The supervisor's side of the service manager.
#[derive(Debug)]
pub struct Notifier {
    /// How often to ping: half the service's `WatchdogSec=`, `None` without a watchdog.
    ping_every: Option<Duration>,
    hang_file: Option<PathBuf>,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` (for this process only) and the test hook from the environment.
    pub fn from_env() -> Self {
        let mut usec = 0;
        let ping_every = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec / 2))
            .filter(|d| !d.is_zero());
        let hang_file = std::env::var_os(TEST_HANG_FILE_ENV).map(PathBuf::from);
        if let Some(path) = &hang_file {
            tracing::warn!(path = %path.display(), "{TEST_HANG_FILE_ENV} is set: the supervisor hangs while this file exists (tests only)");
        }
        Notifier {
            ping_every,
            hang_file,
        }
    }

    /// How often [`Notifier::watchdog`] must be called, if systemd watches this process.
    pub fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// The supervisor runs: `READY=1` with its first status line.
    pub fn ready(&self, status: &RigStatus) {
        send(&[NotifyState::Ready, NotifyState::Status(&summary(status))]);
    }

    /// Replaces the status line `systemctl status rigd` shows.
    pub fn status(&self, status: &RigStatus) {
        send(&[NotifyState::Status(&summary(status))]);
    }

    /// `WATCHDOG=1`. Called from the supervisor's loop only, so a loop that stops turning
    /// stops the pings and systemd restarts rigd.
    pub fn watchdog(&self) {
        if let Some(path) = &self.hang_file {
            while path.exists() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        send(&[NotifyState::Watchdog]);
    }

    /// A drain started: `STOPPING=1`.
    pub fn stopping(&self) {
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: draining in-flight units"),
        ]);
    }
}

/// Sets the status line to `text` (e.g. why rigd is about to stop with an error).
pub fn status_line(text: &str) {
    let line: String = text.chars().filter(|c| *c != '\n').take(500).collect();
    send(&[NotifyState::Status(&line)]);
}

/// The status line: state, cards, units, receipts.
pub fn summary(s: &RigStatus) -> String {
    let state = format!("{:?}", s.state).to_lowercase();
    let key = match &s.key_health {
        KeyHealth::Answering => String::new(),
        KeyHealth::Unresponsive { .. } => format!("; KEY STORE {}", s.key_health),
    };
    format!(
        "{state}: {} card(s), {} unit(s) running, {} queued, receipts journaled to seq {}, {} unacknowledged{key}",
        s.cards.len(),
        s.units_running,
        s.units_queued,
        s.seq_journaled,
        s.receipts_unacked,
    )
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
