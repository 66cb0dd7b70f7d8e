//! The provisioning shell around [`crate::provision`]: loads and persists the state, sends
//! claims over MQTT 5 with the fleet's claim certificate, and hands rigd its identity.
//!
//! The state lives in `state_dir/provision.json`, written atomically (temporary file, fsync,
//! rename, fsync of the directory) after every transition. The CSR is made for the TLS key
//! in the key store (rcgen with a remote key: the key store signs).

use crate::config::{Assigned, Identity, ProvisionConfig, RigSettings, RigTls};
use crate::journal::{Journal, JournalStore};
use crate::keys::KeyStore;
use crate::provision::{State, Step};
use crate::state_dir::{StateDir, StateFile};
use crate::RunError;
use rigd_client::ClientIdentity;
use rigd_protocol::claim::{
    reply_topic, ClaimRequest, ClaimResponse, Inventory, Rekey, CLAIM_TOPIC,
};
use rigd_protocol::{decode, encode, PublicKey};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Test-only hook: names a step of provisioning at which rigd aborts, as a crash or power
/// loss there would: `claiming` (state persisted, CSR made, request not sent), `answered`
/// (answer received, not persisted), `provisioned` (identity persisted, certificate file
/// not written). The provisioning tests use it to crash at every step; nothing else sets it.
pub const TEST_CRASH_ENV: &str = "RIGD_TEST_CRASH_AT";

/// Reads [`TEST_CRASH_ENV`], loudly.
fn test_crash_at() -> Option<String> {
    let at = std::env::var(TEST_CRASH_ENV).ok()?;
    tracing::warn!(step = %at, "{TEST_CRASH_ENV} is set: rigd aborts at this provisioning step (tests only)");
    Some(at)
}

/// Aborts the process if `crash_at` names `step`.
fn crash_point(crash_at: &Option<String>, step: &str) {
    if crash_at.as_deref() == Some(step) {
        tracing::error!(step, "{TEST_CRASH_ENV}: aborting");
        std::process::abort();
    }
}

/// The name a rig goes by before the fleet assigns its id: the common name of its CSR (the
/// provisioner writes the assigned id into the certificate) and the seed of simulated cards'
/// uuids in the claim's inventory.
const CLAIMING: &str = "claiming";

fn runtime(what: &str, e: impl std::fmt::Display) -> RunError {
    RunError::Runtime(format!("{what}: {e}"))
}

/// Reads the persisted state (`Unprovisioned` when there is none).
pub fn load_state(state: &StateDir) -> Result<State, RunError> {
    let path = state.file(StateFile::Provisioning);
    match state.read(StateFile::Provisioning) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes)
            .map_err(|e| runtime(&format!("{} is corrupt", path.display()), e)),
        Ok(None) => Ok(State::Unprovisioned),
        Err(e) => Err(runtime(&path.display().to_string(), e)),
    }
}

/// Records that the broker refused this rig's certificate as revoked: a provisioned rig
/// enters the `Revoked` state and does not run again as that rig (a new claim in a fresh
/// state directory is the way back). A rig with a fixed identity has no state to record.
pub fn record_revoked(state: &StateDir) -> Result<(), RunError> {
    let State::Provisioned(p) = load_state(state)? else {
        return Ok(());
    };
    save_state(state, &State::Revoked { rig: Some(p.rig) })
}

/// The operator keys of a provisioned rig (empty before provisioning): the Ed25519 public
/// keys whose signed commands the rig obeys.
pub fn operator_keys(state: &StateDir) -> Result<Vec<[u8; 32]>, RunError> {
    Ok(match load_state(state)? {
        State::Provisioned(p) => p.operator_keys,
        _ => vec![],
    })
}

/// Writes `data` to `file` atomically and durably.
fn write(state: &StateDir, file: StateFile, data: &[u8]) -> Result<(), RunError> {
    state
        .write(file, data)
        .map_err(|e| runtime(&state.file(file).display().to_string(), e))
}

fn save_state(dir: &StateDir, state: &State) -> Result<(), RunError> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| runtime("provisioning state", e))?;
    write(dir, StateFile::Provisioning, &json)
}

/// The key store's P-256 TLS key as rcgen's remote key: the CSR is signed in the store.
struct StoreKeyPair {
    key: Arc<dyn KeyStore>,
    point: Vec<u8>,
}

impl rcgen::RemoteKeyPair for StoreKeyPair {
    fn public_key(&self) -> &[u8] {
        &self.point
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig = self
            .key
            .sign_digest(&rigd_client::sha256(msg))
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        let rs =
            <[u8; 64]>::try_from(sig.0.as_slice()).map_err(|_| rcgen::Error::RemoteKeyError)?;
        rigd_client::der_signature(&rs).map_err(|_| rcgen::Error::RemoteKeyError)
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// The uncompressed SEC1 point of a P-256 key (as X.509 and CSRs carry it).
fn uncompressed(sec1: &[u8]) -> Option<Vec<u8>> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let key = p256::PublicKey::from_sec1_bytes(sec1).ok()?;
    Some(key.to_encoded_point(false).as_bytes().to_vec())
}

/// A CSR for `key` (P-256), signed by the key store.
pub fn csr(key: Arc<dyn KeyStore>) -> Result<Vec<u8>, RunError> {
    let PublicKey::P256(sec1) = key.public_key() else {
        return Err(runtime("CSR", "the TLS key is not P-256"));
    };
    let point = uncompressed(&sec1).ok_or_else(|| runtime("CSR", "invalid P-256 key"))?;
    let pair = rcgen::KeyPair::from_remote(Box::new(StoreKeyPair { key, point }))
        .map_err(|e| runtime("CSR", e))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CLAIMING);
    let csr = params
        .serialize_request(&pair)
        .map_err(|e| runtime("CSR", e))?;
    Ok(csr.der().to_vec())
}

/// Whether the first certificate of `chain_pem` is for the P-256 key `sec1`.
pub fn chain_is_for(chain_pem: &str, sec1: &[u8]) -> bool {
    let Ok(chain) = rigd_client::parse_certs(chain_pem) else {
        return false;
    };
    let Some(leaf) = chain.first() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    let spki = &cert.tbs_certificate.subject_pki.subject_public_key.data;
    uncompressed(sec1).is_some_and(|p| spki.as_ref() == p.as_slice())
}

/// One claim: connect with the claim certificate and a fresh random client id (whose
/// mailbox only it may read), send the request, wait for the answer.
async fn claim_once(
    p: &ProvisionConfig,
    host: &str,
    port: u16,
    request: Vec<u8>,
) -> Result<ClaimResponse, String> {
    let tls = rigd_client::client_config(
        &p.ca,
        ClientIdentity::KeyFile {
            cert: p.claim_cert.clone(),
            key: p.claim_key.clone(),
        },
    )
    .map_err(|e| e.to_string())?;
    let client_id = format!("claim-{}", hex::encode(rand::random::<[u8; 16]>()));
    let mailbox = reply_topic(&client_id);
    let mut opts = rigd_client::options(
        client_id,
        host,
        port,
        Some(tls),
        rigd_client::Lifetime::Fresh,
    );
    opts.set_outgoing_inflight_upper_limit(10);
    let timeout = Duration::from_millis(p.timeout_ms);
    let answer = rigd_client::request(opts, CLAIM_TOPIC, &mailbox, request, timeout)
        .await
        .map_err(|e| e.to_string())?;
    decode::<ClaimResponse>(&answer).map_err(|e| e.to_string())
}

/// Before a rekey: seals every receipt journaled under the old key into signed batches
/// (signed by the new key, as the old one is gone), so that no batch holds receipts of both
/// keys, and returns the first sequence number the rig journals under the new key. Sealing
/// again after a crash finds nothing left and gives the same number.
fn seal_before_rekey(config: &RigSettings, rig: &str, key: &dyn KeyStore) -> Result<u64, RunError> {
    let rig = rigd_protocol::RigId::new(rig).map_err(|e| runtime("the rig id to keep", e))?;
    let mut journal = Journal::open(&config.state().file(StateFile::Journal), rig)?;
    journal.seal_all(config.batch_max_receipts, key, config.domain())?;
    let from_seq = journal.stats()?.last_seq.saturating_add(1);
    tracing::warn!(from_seq, "the key store holds new keys: receipts journaled before are sealed and will be refused as key changed");
    Ok(from_seq)
}

/// What a grant gives beyond the identity (see [`RigSettings::trust`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    /// Ed25519 public keys of the operators whose signed commands the rig obeys.
    pub operator_keys: Vec<[u8; 32]>,
    /// The deployment the rig's receipts are signed for.
    pub domain: Option<rigd_protocol::Domain>,
}

/// The identity the rig runs with, and what was granted with it: a fixed one as rig.conf
/// gives it (nothing granted), a claimed one as the fleet assigned it (claimed now, or read
/// back from the state directory).
pub async fn provision(
    config: &RigSettings,
    identity: Identity,
    stop: &CancellationToken,
) -> Result<(Assigned, Granted), RunError> {
    let p = match identity {
        Identity::Fixed(assigned) => return Ok((assigned, Granted::default())),
        Identity::Claim(p) => p,
    };
    let (host, port) = config
        .broker_addr()
        .map(|(h, p)| (h.to_owned(), p))
        .ok_or_else(|| RunError::Runtime("broker is not host:port".into()))?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| runtime(&config.state_dir.display().to_string(), e))?;
    let receipt_key: Arc<dyn KeyStore> = Arc::new(config.open_key(&config.key)?);
    let tls_key = crate::tls::open_key(config, &receipt_key)?;
    let PublicKey::P256(sec1) = tls_key.public_key() else {
        return Err(runtime("TLS key", "not P-256"));
    };
    let crash_at = test_crash_at();
    let started = Instant::now();
    let dir = config.state();
    let (mut state, mut step) = load_state(&dir)?.start(&sec1);
    let rekey = match state.rekey() {
        Some(rig) => Some(Rekey {
            rig: rigd_protocol::RigId::new(rig).map_err(|e| runtime("the rig id to keep", e))?,
            from_seq: seal_before_rekey(config, rig, receipt_key.as_ref())?,
        }),
        None => None,
    };
    loop {
        save_state(&dir, &state)?;
        tracing::info!(status = %state.describe(), "provisioning");
        match step {
            Step::Ready(p_rec) => {
                crash_point(&crash_at, "provisioned");
                write(&dir, StateFile::Certificate, p_rec.chain_pem.as_bytes())?;
                let assigned = Assigned {
                    rig: rigd_protocol::RigId::new(&p_rec.rig)
                        .map_err(|e| runtime("assigned rig id", e))?,
                    tls: Some(RigTls {
                        ca: p.ca.clone(),
                        cert: dir.file(StateFile::Certificate),
                    }),
                };
                tracing::info!(rig = %p_rec.rig, owner = %p_rec.owner, elapsed_ms = started.elapsed().as_millis() as u64, "provisioned: ready");
                return Ok((
                    assigned,
                    Granted {
                        operator_keys: p_rec.operator_keys,
                        domain: p_rec.domain,
                    },
                ));
            }
            Step::Stop => {
                return Err(RunError::Revoked(
                    "this rig's identity was revoked; it will not connect".into(),
                ))
            }
            Step::Retry(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return Err(RunError::Runtime("stopped while provisioning".into())),
                }
            }
            Step::Claim => {}
        }
        let (cards, driver) = {
            let seed = rigd_protocol::RigId::new(CLAIMING)
                .unwrap_or_else(|_| unreachable!("a valid rig id"));
            let (gpu, _) = config.open_cards(&seed);
            let driver = match config.gpu {
                crate::config::GpuBackend::Sim => "sim",
                crate::config::GpuBackend::Nvml => "nvidia",
            };
            (gpu.inventory(), driver.to_owned())
        };
        let request = ClaimRequest {
            token: p.claim.clone(),
            tls_key: sec1.clone(),
            csr_der: csr(tls_key.clone())?,
            inventory: Inventory {
                cards,
                driver,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                receipt_key: receipt_key.public_key(),
            },
            rekey: rekey.clone(),
        };
        crash_point(&crash_at, "claiming");
        let answer = tokio::select! {
            a = claim_once(&p, &host, port, encode(&request)) => a,
            _ = stop.cancelled() => return Err(RunError::Runtime("stopped while provisioning".into())),
        };
        (state, step) = match answer {
            Ok(response) => {
                crash_point(&crash_at, "answered");
                if let ClaimResponse::Refused { reason, message } = &response {
                    tracing::warn!(?reason, %message, "claim refused");
                }
                let matches = match &response {
                    ClaimResponse::Granted(g) => chain_is_for(&g.chain_pem, &sec1),
                    ClaimResponse::Refused { .. } => false,
                };
                state.on_response(response, &sec1, matches)
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim got no answer");
                state.on_failure()
            }
        };
    }
}
