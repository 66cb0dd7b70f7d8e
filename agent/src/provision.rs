//! The provisioning state machine, pure: states, inputs and decisions, no I/O.
//!
//! `Unprovisioned -> Claiming -> Provisioned`, with `Refused` (the claim was refused for a
//! reason that retrying the same request cannot fix: wait long, the operator may fix the
//! claim) and `Revoked` (the fleet revoked this rig: stop). A key change (the key store was
//! replaced) turns `Provisioned` back into `Claiming`, remembering the rig it was: the claim
//! asks to keep that identity under the new keys (a rekey). The state is persisted after
//! every transition (atomically, by the shell), so a crash or power loss at any step resumes
//! from the last state; the provisioner answers a repeated claim by the same key with the same
//! identity, so resuming never makes a second rig.

use rigd_protocol::claim::{ClaimResponse, Grant, Refusal};
use rigd_protocol::Domain;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// First retry delay after a failed attempt.
pub const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest delay between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The identity a rig was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provisioned {
    /// The rig id (the certificate's CN).
    pub rig: String,
    /// The owner.
    pub owner: String,
    /// The TLS public key (SEC1) the certificate is for.
    pub tls_key: Vec<u8>,
    /// The certificate chain, PEM, leaf first.
    pub chain_pem: String,
    /// Ed25519 public keys of the operators whose commands the rig obeys.
    pub operator_keys: Vec<[u8; 32]>,
    /// The deployment its receipts are signed for (absent in a state written before grants
    /// named one: rig.conf's then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
}

/// Where provisioning stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// No identity and no attempt yet.
    Unprovisioned,
    /// Claiming; `attempt` failed attempts so far.
    Claiming {
        /// Failed attempts.
        attempt: u32,
        /// The rig id to keep under new keys (a rekey), if the rig had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rekey: Option<String>,
    },
    /// Refused for a reason retrying cannot fix by itself.
    Refused {
        /// Why.
        reason: Refusal,
        /// Attempts refused so far.
        attempt: u32,
        /// The rig id to keep under new keys (a rekey), if the rig had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rekey: Option<String>,
    },
    /// Has its identity.
    Provisioned(Provisioned),
    /// The fleet revoked this rig's identity.
    Revoked {
        /// The rig it was, if known.
        rig: Option<String>,
    },
}

/// What the shell does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send a claim now.
    Claim,
    /// Wait this long, then send a claim.
    Retry(Duration),
    /// Run as this rig.
    Ready(Provisioned),
    /// Do not run: the identity was revoked.
    Stop,
}

fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX)
}

impl State {
    /// The next step at start-up with the current TLS key.
    pub fn start(self, tls_key: &[u8]) -> (State, Step) {
        match self {
            State::Provisioned(p) if p.tls_key == tls_key => {
                let step = Step::Ready(p.clone());
                (State::Provisioned(p), step)
            }
            // Another key than the certificate's: the key store was replaced. Claim again,
            // asking to stay the same rig.
            State::Provisioned(p) => (
                State::Claiming {
                    attempt: 0,
                    rekey: Some(p.rig),
                },
                Step::Claim,
            ),
            State::Revoked { rig } => (State::Revoked { rig }, Step::Stop),
            State::Unprovisioned => (
                State::Claiming {
                    attempt: 0,
                    rekey: None,
                },
                Step::Claim,
            ),
            s @ (State::Claiming { .. } | State::Refused { .. }) => (s, Step::Claim),
        }
    }

    /// After an answer from the provisioner. `chain_key_matches` tells whether the granted
    /// certificate is for our TLS key (checked by the shell, which parses the certificate).
    pub fn on_response(
        self,
        response: ClaimResponse,
        tls_key: &[u8],
        chain_key_matches: bool,
    ) -> (State, Step) {
        let attempt = self.attempt();
        let rekey = self.rekey().map(str::to_owned);
        match response {
            ClaimResponse::Granted(Grant {
                rig,
                owner,
                chain_pem,
                operator_keys,
                domain,
            }) if chain_key_matches => {
                let p = Provisioned {
                    rig: rig.to_string(),
                    owner,
                    tls_key: tls_key.to_vec(),
                    chain_pem,
                    operator_keys,
                    domain: Some(domain),
                };
                (State::Provisioned(p.clone()), Step::Ready(p))
            }
            ClaimResponse::Granted(_) => self.on_failure(),
            ClaimResponse::Refused {
                reason: Refusal::RigRevoked,
                ..
            } => (State::Revoked { rig: None }, Step::Stop),
            ClaimResponse::Refused { reason, .. } if reason.is_retryable() => self.on_failure(),
            ClaimResponse::Refused { reason, .. } => {
                let attempt = attempt + 1;
                (
                    State::Refused {
                        reason,
                        attempt,
                        rekey,
                    },
                    Step::Retry(BACKOFF_MAX.max(backoff(attempt))),
                )
            }
        }
    }

    /// After an attempt that got no answer (broker unreachable, timeout, garbage).
    pub fn on_failure(self) -> (State, Step) {
        let attempt = self.attempt() + 1;
        let rekey = self.rekey().map(str::to_owned);
        (
            State::Claiming { attempt, rekey },
            Step::Retry(backoff(attempt)),
        )
    }

    fn attempt(&self) -> u32 {
        match self {
            State::Claiming { attempt, .. } | State::Refused { attempt, .. } => *attempt,
            _ => 0,
        }
    }

    /// The rig id a claim in this state asks to keep under new keys, if any.
    pub fn rekey(&self) -> Option<&str> {
        match self {
            State::Claiming { rekey, .. } | State::Refused { rekey, .. } => rekey.as_deref(),
            _ => None,
        }
    }

    /// One line for the journal and `rigd` status.
    pub fn describe(&self) -> String {
        match self {
            State::Unprovisioned => "unprovisioned".into(),
            State::Claiming {
                attempt,
                rekey: Some(rig),
            } => format!("claiming to stay {rig} under a new key (failed attempts: {attempt})"),
            State::Claiming { attempt, .. } => format!("claiming (failed attempts: {attempt})"),
            State::Refused {
                reason, attempt, ..
            } => {
                format!("claim refused: {reason:?} ({attempt} times); fix the claim in rig.conf or ask the fleet operator")
            }
            State::Provisioned(p) => format!("provisioned as {} for {}", p.rig, p.owner),
            State::Revoked { .. } => "revoked by the fleet: this rig will not connect".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigd_protocol::RigId;

    fn grant() -> ClaimResponse {
        ClaimResponse::Granted(Grant {
            rig: RigId::new("rig-1").unwrap_or_else(|_| unreachable!()),
            owner: "alice".into(),
            chain_pem: "PEM".into(),
            operator_keys: vec![[9; 32]],
            domain: Domain::new(10, rigd_protocol::EthAddress([3; 20])),
        })
    }

    fn refused(reason: Refusal) -> ClaimResponse {
        ClaimResponse::Refused {
            reason,
            message: String::new(),
        }
    }

    #[test]
    fn a_fresh_rig_claims_and_becomes_ready() {
        let (s, step) = State::Unprovisioned.start(b"k");
        assert_eq!(step, Step::Claim);
        let (s, step) = s.on_response(grant(), b"k", true);
        let Step::Ready(p) = step else {
            panic!("not ready: {step:?}")
        };
        assert_eq!(p.rig, "rig-1");
        assert_eq!(p.operator_keys, vec![[9; 32]]);
        assert_eq!(p.domain.map(|d| d.chain_id), Some(10));
        assert_eq!(s, State::Provisioned(p.clone()));
        // A restart with the same key is ready at once, with no claim.
        assert_eq!(s.start(b"k").1, Step::Ready(p));
    }

    #[test]
    fn failures_back_off_up_to_a_cap_and_resume_claiming_after_a_restart() {
        let mut s = State::Unprovisioned.start(b"k").0;
        let mut waits = vec![];
        for _ in 0..12 {
            let (next, step) = s.on_failure();
            let Step::Retry(d) = step else {
                panic!("{step:?}")
            };
            waits.push(d);
            s = next;
        }
        assert_eq!(waits[0], BACKOFF_START * 2);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().unwrap_or(&Duration::ZERO), BACKOFF_MAX);
        // Persisted mid-claim, restarted: claims again straight away.
        assert_eq!(s.start(b"k").1, Step::Claim);
    }

    #[test]
    fn refusals_wait_long_and_revocation_stops_for_good() {
        let s = State::Unprovisioned.start(b"k").0;
        let (s, step) = s.on_response(refused(Refusal::UsedUp), b"k", false);
        assert_eq!(step, Step::Retry(BACKOFF_MAX));
        assert!(matches!(
            s,
            State::Refused {
                reason: Refusal::UsedUp,
                ..
            }
        ));
        let (s, step) = s.on_response(refused(Refusal::Internal), b"k", false);
        assert!(matches!(step, Step::Retry(_)));
        let (s, step) = s.on_response(refused(Refusal::RigRevoked), b"k", false);
        assert_eq!(step, Step::Stop);
        assert_eq!(s.clone().start(b"k").1, Step::Stop);
    }

    #[test]
    fn a_certificate_for_another_key_is_not_accepted() {
        let s = State::Unprovisioned.start(b"k").0;
        let (s, step) = s.on_response(grant(), b"k", false);
        assert!(matches!(step, Step::Retry(_)));
        assert!(matches!(s, State::Claiming { attempt: 1, .. }));
    }

    #[test]
    fn a_replaced_key_store_claims_to_stay_the_same_rig_through_failures_and_refusals() {
        let s = State::Unprovisioned.start(b"k").0;
        assert_eq!(s.rekey(), None);
        let (s, _) = s.on_response(grant(), b"k", true);
        let (s, step) = s.start(b"other");
        assert_eq!(step, Step::Claim);
        assert_eq!(s.rekey(), Some("rig-1"));
        let (s, _) = s.on_failure();
        let (s, _) = s.on_response(refused(Refusal::UsedUp), b"other", false);
        assert_eq!(s.rekey(), Some("rig-1"), "kept while refused");
        let json = serde_json::to_string(&s).unwrap_or_default();
        let back: State = serde_json::from_str(&json).unwrap_or(State::Unprovisioned);
        assert_eq!(
            back.start(b"other").0.rekey(),
            Some("rig-1"),
            "and across a restart"
        );
        let old: State =
            serde_json::from_str(r#"{"Claiming":{"attempt":2}}"#).unwrap_or(State::Unprovisioned);
        assert_eq!(
            old.attempt(),
            2,
            "a state written before rekeys still reads"
        );
        let (s, step) = s.on_response(grant(), b"other", true);
        assert!(matches!(step, Step::Ready(_)));
        assert_eq!(s.rekey(), None);
    }
}
