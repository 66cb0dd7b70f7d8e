//! Operator commands: who may command this rig, and which commands it takes.
//!
//! [`Verifier::check`] is pure: it takes a decoded [`Command`], the time and the last nonce
//! accepted per operator, and accepts or refuses with a [`Rejection`]. In order, a command
//! is refused when it names another rig, when its operator key is not trusted, when its
//! signature does not verify (forged or altered), when it is issued more than
//! [`CLOCK_SKEW_MS`] in the future or lives longer than [`MAX_COMMAND_TTL_MS`], when it has
//! expired, when its nonce is not above the last one accepted from that operator (replayed),
//! and when rig.conf's `allowed_commands` does not list its action.
//!
//! [`NonceStore`] keeps the last accepted nonce of each operator in the state directory,
//! written atomically (temporary file, fsync, rename, fsync of the directory) before the
//! command is carried out, so a crash or a restart never reopens a replay.

use rigd_protocol::command::{ActionKind, Command, Rejection, MAX_COMMAND_TTL_MS};
use rigd_protocol::RigId;
use std::collections::HashMap;
use std::path::PathBuf;

/// How far in the future a command may be issued (the operator's clock ahead of the rig's).
pub const CLOCK_SKEW_MS: u64 = 60_000;

/// The most operators whose nonces are kept (the trusted keys bound it in practice).
const MAX_OPERATORS: usize = 1024;

/// The rig's command policy.
#[derive(Debug, Clone)]
pub struct Verifier {
    rig: RigId,
    operators: Vec<[u8; 32]>,
    allowed: Option<Vec<ActionKind>>,
}

impl Verifier {
    /// Trusts `operators` (Ed25519 public keys) for `rig`; `allowed` lists the actions taken
    /// (`None`: all).
    pub fn new(rig: RigId, operators: Vec<[u8; 32]>, allowed: Option<Vec<ActionKind>>) -> Self {
        Self {
            rig,
            operators,
            allowed,
        }
    }

    /// Accepts `cmd` at `now_ms` given the last nonce accepted from its operator, or says why
    /// not.
    pub fn check(
        &self,
        cmd: &Command,
        now_ms: u64,
        last_nonce: Option<u64>,
    ) -> Result<(), Rejection> {
        if cmd.rig != self.rig {
            return Err(Rejection::WrongRig(cmd.rig.clone()));
        }
        if !self.operators.contains(&cmd.operator) {
            return Err(Rejection::UnknownOperator(hex::encode(cmd.operator)));
        }
        if !cmd.signature_valid() {
            return Err(Rejection::BadSignature);
        }
        if cmd.issued_ms > now_ms.saturating_add(CLOCK_SKEW_MS) {
            return Err(Rejection::Window(format!(
                "issued at {} ms, more than {CLOCK_SKEW_MS} ms ahead of the rig's clock ({now_ms})",
                cmd.issued_ms
            )));
        }
        if cmd.expires_ms.saturating_sub(cmd.issued_ms) > MAX_COMMAND_TTL_MS {
            return Err(Rejection::Window(format!(
                "valid for {} ms, over the {MAX_COMMAND_TTL_MS} ms the rig accepts",
                cmd.expires_ms.saturating_sub(cmd.issued_ms)
            )));
        }
        if now_ms > cmd.expires_ms {
            return Err(Rejection::Expired {
                expires_ms: cmd.expires_ms,
                now_ms,
            });
        }
        if let Some(last) = last_nonce.filter(|last| cmd.nonce <= *last) {
            return Err(Rejection::Replayed {
                nonce: cmd.nonce,
                last,
            });
        }
        let kind = cmd.action.kind();
        if self.allowed.as_ref().is_some_and(|a| !a.contains(&kind)) {
            return Err(Rejection::NotAllowed(kind));
        }
        Ok(())
    }
}

/// Why the nonce file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("operator nonce file {path}: {reason}")]
pub struct NonceError {
    path: PathBuf,
    reason: String,
}

/// The last nonce accepted from each operator, durable in `operator-nonces` in the state
/// directory (one `HEXKEY NONCE` line per operator).
#[derive(Debug)]
pub struct NonceStore {
    path: PathBuf,
    last: HashMap<[u8; 32], u64>,
}

impl NonceStore {
    /// Opens (or starts) the store in `state_dir`. A damaged file is an error: starting
    /// afresh would reopen replays.
    pub fn open(state: &crate::state_dir::StateDir) -> Result<Self, NonceError> {
        let path = state.file(crate::state_dir::StateFile::Nonces);
        let fail = |reason: String| NonceError {
            path: path.clone(),
            reason,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(fail(e.to_string())),
        };
        let mut last = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let parsed = line.split_once(' ').and_then(|(k, n)| {
                let mut key = [0u8; 32];
                hex::decode_to_slice(k, &mut key).ok()?;
                Some((key, n.parse::<u64>().ok()?))
            });
            let (key, nonce) = parsed.ok_or_else(|| fail(format!("line {} is damaged", i + 1)))?;
            last.insert(key, nonce);
        }
        Ok(Self { path, last })
    }

    /// The last nonce accepted from `operator`.
    pub fn last(&self, operator: &[u8; 32]) -> Option<u64> {
        self.last.get(operator).copied()
    }

    /// Records `nonce` as the last accepted from `operator`, durably, before returning.
    pub fn accept(&mut self, operator: [u8; 32], nonce: u64) -> Result<(), NonceError> {
        if !self.last.contains_key(&operator) && self.last.len() >= MAX_OPERATORS {
            return Err(NonceError {
                path: self.path.clone(),
                reason: format!("more than {MAX_OPERATORS} operators"),
            });
        }
        let previous = self.last.insert(operator, nonce);
        let written = self.write();
        if written.is_err() {
            match previous {
                Some(p) => self.last.insert(operator, p),
                None => self.last.remove(&operator),
            };
        }
        written
    }

    fn write(&self) -> Result<(), NonceError> {
        let fail = |e: std::io::Error| NonceError {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let mut lines: Vec<String> = self
            .last
            .iter()
            .map(|(k, n)| format!("{} {n}\n", hex::encode(k)))
            .collect();
        lines.sort();
        crate::state_dir::write_atomic(&self.path, lines.concat().as_bytes(), 0o600).map_err(fail)
    }
}

#[cfg(test)]
#[path = "commands_tests.rs"]
mod tests;
