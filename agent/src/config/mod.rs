//! `rig.conf`: TOML, every key known, every mistake named with its line.

use crate::governor::ThermalOverrides;
use crate::keys::KeyLocation;
use rigd_protocol::{ActionKind, Domain, EthAddress, RigId};
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::path::{Path, PathBuf};

mod identity;
mod sim;

pub use identity::{Assigned, Identity, ProvisionConfig, RigTls};
pub use sim::{SimConfig, SimFaultConfig, SimFaultKind};

/// Why `rig.conf` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a wrong type.
    #[error("{path} line {line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem (0 when the parser gave no position).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value of the right type that is not acceptable.
    #[error("{path}: {key}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Which GPU backend drives the cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackend {
    /// Simulated cards (thermal model, CPU reference kernels).
    Sim,
    /// NVIDIA cards through NVML, computing with the PTX kernels through CUDA.
    Nvml,
}

/// The rig's configuration: who it is and how it runs.
#[derive(Debug, Clone)]
pub struct RigConfig {
    /// `rig_id` and `[tls]`, or `[provision]`.
    pub identity: Identity,
    /// Everything else.
    pub settings: RigSettings,
}

/// rig.conf less the identity: the broker, the state directory, the keys, the cards, the
/// intervals and limits, the operators.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigSettings {
    /// MQTT broker, `host:port`.
    pub broker: String,
    /// Where the journal, the outbox and the software key live.
    pub state_dir: PathBuf,
    /// Receipt signing key, by URI: `file:NAME` (relative to `state_dir`) or `file:///ABS/PATH`,
    /// optionally `?curve=secp256k1|p256`.
    #[serde(default = "default_key")]
    pub key: KeyLocation,
    /// The longest one call into a key store (open, signature) may take before rigd gives up
    /// on it, drops its connection and reopens it with backoff, ms.
    #[serde(default = "default_key_timeout_ms")]
    pub key_timeout_ms: u64,
    /// Must be `true` for a `file:` key: software keys are for development only.
    #[serde(default)]
    pub allow_software_key: bool,
    /// GPU backend: NVIDIA cards unless simulated ones are asked for (`"sim"`). A machine
    /// without the NVIDIA driver then runs with no cards.
    #[serde(default = "default_gpu")]
    pub gpu: GpuBackend,
    /// The simulated cards (`[sim]`), for `gpu = "sim"` only.
    #[serde(default)]
    pub sim: Option<SimConfig>,
    /// Period of telemetry samples, ms.
    #[serde(default = "default_telemetry_ms")]
    pub telemetry_interval_ms: u64,
    /// The deployment receipts are signed for (`[receipt_domain]`: `chain_id` and `contract`,
    /// the settlement contract's address). A provisioned rig signs for the one its grant
    /// names instead; absent both, the local development chain ([`Domain::LOCAL`]).
    #[serde(default)]
    pub receipt_domain: ReceiptDomain,
    /// Most receipts signed together in one batch.
    #[serde(default = "default_batch_max")]
    pub batch_max_receipts: u32,
    /// Longest a journaled receipt waits for its batch to be sealed and signed while the batch
    /// is smaller than the size the key's measured signing rate calls for, ms.
    #[serde(default = "default_batch_age_ms")]
    pub batch_max_age_ms: u64,
    /// Each batch covers this much time, ms: no batch is sealed before its oldest receipt is
    /// this old (or `batch_max_receipts` wait), so one signature covers a window's receipts
    /// however fast the key is (settlement checks one signature per batch). 0: batches follow
    /// the key's speed. Receipts are credited a window later.
    #[serde(default)]
    pub batch_window_ms: u64,
    /// Unacknowledged batches are sent again after this long, ms.
    #[serde(default = "default_resend_ms")]
    pub resend_interval_ms: u64,
    /// When this many receipts wait for the coordinator's acknowledgement, the rig stops
    /// starting new units (it never drops a receipt) until acknowledgements drain the outbox.
    #[serde(default = "default_max_unacked")]
    pub max_unacked_receipts: u64,
    /// A worker silent for this long past its unit's expected time is killed, ms.
    #[serde(default = "default_hang_ms")]
    pub worker_hang_ms: u64,
    /// Period of the thermal governor (read each card, decide, act), ms.
    #[serde(default = "default_governor_ms")]
    pub governor_interval_ms: u64,
    /// Thermal limits overriding the defaults of each card model.
    #[serde(default)]
    pub thermal: ThermalOverrides,
    /// Worker failures within `failure_window_ms` that quarantine a card.
    #[serde(default = "default_failures")]
    pub failures_to_quarantine: u32,
    /// Window for `failures_to_quarantine`, ms.
    #[serde(default = "default_failure_window_ms")]
    pub failure_window_ms: u64,
    /// Operators whose signed commands the rig takes: Ed25519 public keys, 64 hex digits
    /// each (`rigctl operator keygen` prints one).
    #[serde(default)]
    pub operator_keys: Vec<OperatorKey>,
    /// The command actions the rig takes (`drain`, `pause`, `resume`, `set_power_limit`,
    /// `set_thermal_limits`, `restart_worker`, `quarantine`, `release`, `rotate_logs`,
    /// `diagnostics`, `update`); absent: all of them.
    #[serde(default)]
    pub allowed_commands: Option<Vec<ActionKind>>,
    /// Key URI of the TLS client key; defaults to `key`. TLS has no secp256k1: a rig whose
    /// receipt key is secp256k1 names a P-256 key here (for example `file:tls-key?curve=p256`
    /// or a TPM key). The key signs the handshake inside its store.
    #[serde(default)]
    pub tls_key: Option<KeyLocation>,
    /// `[update]`: how the rig takes image updates.
    #[serde(default)]
    pub update: UpdateConfig,
    /// `rig_id`, `[tls]` and `[provision]`, read by the identity's own pass over the file.
    #[serde(default, rename = "rig_id")]
    _rig_id: IgnoredAny,
    #[serde(default, rename = "tls")]
    _tls: IgnoredAny,
    #[serde(default, rename = "provision")]
    _provision: IgnoredAny,
}

/// `[update]`: how the rig takes image updates ([`crate::update`]). The defaults are the rig
/// image's; a rig that runs from no image (no `image_release` file) takes none.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// The RAUC command line.
    #[serde(default = "default_rauc")]
    pub rauc: PathBuf,
    /// RAUC's system.conf, when not its default (`/etc/rauc/system.conf`).
    #[serde(default)]
    pub rauc_conf: Option<PathBuf>,
    /// The image's release file (`RIGD_IMAGE_VERSION=...`).
    #[serde(default = "default_image_release")]
    pub image_release: PathBuf,
    /// A CA (PEM) the bundle server's certificate may chain to, besides the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The largest bundle fetched, MiB.
    #[serde(default = "default_max_bundle_mib")]
    pub max_bundle_mib: u64,
    /// The longest a bundle's download may take, s.
    #[serde(default = "default_download_timeout_s")]
    pub download_timeout_s: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            rauc: default_rauc(),
            rauc_conf: None,
            image_release: default_image_release(),
            ca: None,
            max_bundle_mib: default_max_bundle_mib(),
            download_timeout_s: default_download_timeout_s(),
        }
    }
}

fn default_rauc() -> PathBuf {
    PathBuf::from("rauc")
}
fn default_image_release() -> PathBuf {
    PathBuf::from("/etc/rigd-image")
}
fn default_max_bundle_mib() -> u64 {
    4096
}
fn default_download_timeout_s() -> u64 {
    1800
}

/// `[receipt_domain]`: the EIP-712 domain receipts are signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DomainTable")]
pub struct ReceiptDomain(pub Domain);

impl Default for ReceiptDomain {
    fn default() -> Self {
        Self(Domain::LOCAL)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainTable {
    chain_id: u64,
    contract: String,
}

impl TryFrom<DomainTable> for ReceiptDomain {
    type Error = String;
    fn try_from(t: DomainTable) -> Result<Self, String> {
        let contract = EthAddress::parse(t.contract.trim())
            .map_err(|e| format!("contract {:?}: {e}", t.contract))?;
        if t.chain_id == 0 {
            return Err("chain_id 0 is no chain".into());
        }
        Ok(Self(Domain::new(t.chain_id, contract)))
    }
}

/// An operator's Ed25519 public key, written in rig.conf as 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct OperatorKey(pub [u8; 32]);

impl TryFrom<String> for OperatorKey {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key)
            .map_err(|_| format!("operator key {text:?} is not 64 hex digits"))?;
        Ok(Self(key))
    }
}

fn default_key() -> KeyLocation {
    KeyLocation::software("receipt-key")
}
fn default_key_timeout_ms() -> u64 {
    10_000
}
fn default_gpu() -> GpuBackend {
    GpuBackend::Nvml
}
fn default_telemetry_ms() -> u64 {
    2000
}
fn default_batch_max() -> u32 {
    256
}
fn default_batch_age_ms() -> u64 {
    1000
}
fn default_resend_ms() -> u64 {
    3000
}
fn default_max_unacked() -> u64 {
    200_000
}
fn default_hang_ms() -> u64 {
    30_000
}
fn default_governor_ms() -> u64 {
    1000
}
fn default_failures() -> u32 {
    3
}
fn default_failure_window_ms() -> u64 {
    600_000
}

impl RigConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks `text`, naming `path` in errors. The identity keys and the
    /// settings are read in two passes over the same text, each keeping the parser's
    /// positions for its errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0),
            message: e.message().to_owned(),
        };
        let settings: RigSettings = toml::from_str(text).map_err(parse_error)?;
        let keys: identity::IdentityKeys = toml::from_str(text).map_err(parse_error)?;
        let identity = keys
            .identity()
            .map_err(|(key, message)| ConfigError::Value {
                path: path.to_owned(),
                key,
                message,
            })?;
        settings.check(path)?;
        Ok(Self { identity, settings })
    }
}

impl RigSettings {
    /// A simulated rig with defaults, for the demo and tests.
    pub fn sim(broker_host: &str, broker_port: u16, state_dir: PathBuf, gpus: u32) -> Self {
        Self {
            broker: format!("{broker_host}:{broker_port}"),
            state_dir,
            key: default_key(),
            key_timeout_ms: default_key_timeout_ms(),
            allow_software_key: true,
            gpu: GpuBackend::Sim,
            sim: Some(SimConfig::cards(gpus)),
            telemetry_interval_ms: 500,
            receipt_domain: ReceiptDomain::default(),
            batch_max_receipts: default_batch_max(),
            batch_max_age_ms: default_batch_age_ms(),
            batch_window_ms: 0,
            resend_interval_ms: 1000,
            max_unacked_receipts: default_max_unacked(),
            worker_hang_ms: default_hang_ms(),
            governor_interval_ms: default_governor_ms(),
            thermal: ThermalOverrides::default(),
            failures_to_quarantine: default_failures(),
            failure_window_ms: default_failure_window_ms(),
            operator_keys: vec![],
            allowed_commands: None,
            tls_key: None,
            update: UpdateConfig::default(),
            _rig_id: IgnoredAny,
            _tls: IgnoredAny,
            _provision: IgnoredAny,
        }
    }

    /// Opens the key at `location` as rigd holds its keys: every call bounded by
    /// `key_timeout_ms`, the store reopened after a failure.
    pub fn open_key(
        &self,
        location: &KeyLocation,
    ) -> Result<crate::keys::guard::GuardedKey, crate::keys::KeyError> {
        crate::keys::open_guarded(
            location,
            &self.state_dir,
            self.allow_software_key,
            std::time::Duration::from_millis(self.key_timeout_ms),
        )
    }

    /// The cards of the configured backend, and where their workers compute (`rig` seeds
    /// simulated cards' uuids). With `nvml` and no usable driver, the rig runs with no cards
    /// (and says so) rather than stopping.
    pub fn open_cards(&self, rig: &RigId) -> (Box<dyn crate::gpu::Gpu>, crate::worker::Device) {
        use crate::gpu::{faults::Scheduled, nvml::NvmlGpu, SimGpu};
        use crate::worker::Device;
        match self.gpu {
            GpuBackend::Sim => {
                let sim = self.sim.clone().unwrap_or_default();
                let mut cards = SimGpu::new(rig, sim.gpus);
                cards.set_ambient(sim.ambient_c);
                let plan = sim.fault.iter().map(SimFaultConfig::planned).collect();
                (
                    Box::new(Scheduled::new(cards, plan)),
                    Device::Sim { gflops: sim.gflops },
                )
            }
            GpuBackend::Nvml => match NvmlGpu::open() {
                Ok(gpu) => (Box::new(gpu), Device::Cuda),
                Err(e) => {
                    tracing::error!(error = %e, "no NVIDIA driver: running with no cards");
                    (Box::new(SimGpu::new(rig, 0)), Device::Cuda)
                }
            },
        }
    }

    /// The state directory.
    pub fn state(&self) -> crate::state_dir::StateDir {
        crate::state_dir::StateDir::new(&self.state_dir)
    }

    /// The trusted operator keys.
    pub fn operator_keys(&self) -> Vec<[u8; 32]> {
        self.operator_keys.iter().map(|k| k.0).collect()
    }

    /// The deployment this rig's receipts are signed for.
    pub fn domain(&self) -> Domain {
        self.receipt_domain.0
    }

    /// Takes what provisioning granted: its operator keys beside those rig.conf lists (each
    /// once), and its receipt domain over rig.conf's.
    pub fn trust(&mut self, granted: crate::claim::Granted) {
        if let Some(domain) = granted.domain {
            self.receipt_domain = ReceiptDomain(domain);
        }
        for key in granted.operator_keys {
            if !self.operator_keys.iter().any(|k| k.0 == key) {
                self.operator_keys.push(OperatorKey(key));
            }
        }
    }

    /// The broker split into host and port.
    pub fn broker_addr(&self) -> Option<(&str, u16)> {
        let (host, port) = self.broker.rsplit_once(':')?;
        Some((host, port.parse().ok()?))
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key, message: String| {
            Err(ConfigError::Value {
                path: path.to_owned(),
                key,
                message,
            })
        };
        if self.broker_addr().is_none() {
            return bad("broker", format!("{:?} is not host:port", self.broker));
        }
        match (&self.sim, self.gpu) {
            (Some(_), GpuBackend::Nvml) => {
                return bad(
                    "sim",
                    "[sim] describes simulated cards: give gpu = \"sim\" or leave [sim] out".into(),
                )
            }
            (Some(sim), GpuBackend::Sim) => {
                if let Some((key, why)) = sim.problem() {
                    return bad(key, why);
                }
            }
            (None, _) => {}
        }
        if self.batch_max_receipts == 0
            || self.batch_max_receipts as usize > rigd_protocol::MAX_BATCH
        {
            return bad(
                "batch_max_receipts",
                format!(
                    "{} is outside 1..={}",
                    self.batch_max_receipts,
                    rigd_protocol::MAX_BATCH
                ),
            );
        }
        if self.batch_max_age_ms == 0 || self.batch_max_age_ms > 60_000 {
            return bad(
                "batch_max_age_ms",
                format!("{} is outside 1..=60000", self.batch_max_age_ms),
            );
        }
        if self.batch_window_ms > 3_600_000 {
            return bad(
                "batch_window_ms",
                format!("{} is over an hour (3600000)", self.batch_window_ms),
            );
        }
        if self.telemetry_interval_ms < 100 || self.resend_interval_ms < 100 {
            return bad(
                "telemetry_interval_ms",
                "intervals must be at least 100 ms".into(),
            );
        }
        if self.governor_interval_ms < 100 || self.governor_interval_ms > 2000 {
            return bad(
                "governor_interval_ms",
                format!("{} is outside 100..=2000", self.governor_interval_ms),
            );
        }
        if !(100..=600_000).contains(&self.key_timeout_ms) {
            return bad(
                "key_timeout_ms",
                format!("{} is outside 100..=600000", self.key_timeout_ms),
            );
        }
        if self.max_unacked_receipts == 0 {
            return bad("max_unacked_receipts", "must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
