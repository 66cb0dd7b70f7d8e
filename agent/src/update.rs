//! Over-the-air updates of the rig image: RAUC bundles into the other root slot (A/B), with
//! the image's boot counting as the way back.
//!
//! An operator's signed [`Action::Update`] drains the rig (the core holds it until drained,
//! then hands it over as [`crate::supervisor::Effect::Install`]). Then, off the supervisor's
//! loop: the bundle is fetched over HTTPS into the state directory (bounded in size and
//! time), its SHA-256 compared with the one the command signed, `rauc info` checks its
//! signature against the image's keyring and says its compatible and version, which must be
//! this machine's and the command's; only then does `rauc install` write the other slot,
//! and RAUC makes it the one that boots next, on trial (its entry counts tries). rigd
//! records the pending update, asks for the reboot and answers the operator.
//!
//! On the next start, [`Updater::open`] compares the booted slot with the pending update:
//! on the new slot rigd is on trial and marks it good (`rauc status mark-good booted`) once
//! it is on the broker with its cards ([`Updater::confirm`]); on the old slot the update
//! rolled back (the boot counter ran out, see the image's rig-trial) and rigd reports it
//! failed with what each try left in the trial log. The journal, identity and nonces are on
//! the data partition, untouched by either slot.
//!
//! rigd runs unprivileged: it reaches RAUC's service over D-Bus through the `rauc` command
//! line (the image's D-Bus policy lets user rigd talk to it), and asks for the reboot by
//! creating [`StateFile::UpdateReboot`], which the image's rigd-reboot.path acts on.

use crate::config::UpdateConfig;
use crate::state_dir::{read_optional, write_atomic, StateDir, StateFile};
use crate::worker::unix_ms;
use rigd_client::http::{self, Url};
use rigd_protocol::command::Action;
use rigd_protocol::update::{UpdateResult, UpdateState, UpdateStatus, MAX_REASON};
use rigd_protocol::{clip, RigId, MAX_TEXT};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// The longest any one `rauc` call may take but an install.
const RAUC_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest an install may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1800);

/// An update installed and waiting for its first boot (kept in [`StateFile::UpdatePending`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    version: String,
    from_slot: String,
    to_slot: String,
}

/// What the install task reports to the supervisor's loop.
#[derive(Debug)]
pub enum Progress {
    /// The bundle is checked; RAUC writes the other slot.
    Installing,
    /// Installed into `slot`, which boots next.
    Installed {
        /// The slot.
        slot: String,
    },
    /// Nothing was installed (or the install failed): why.
    Failed(String),
}

/// The slot status RAUC reports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slots {
    compatible: String,
    booted: String,
    primary: Option<String>,
}

/// The rig's updater: what image it runs, from which slot, and the update under way.
pub struct Updater {
    config: UpdateConfig,
    state: StateDir,
    image_version: String,
    /// Booted slot and compatible, when RAUC answers (an image with RAUC).
    slots: Option<Slots>,
    now: UpdateState,
    target: Option<String>,
    last: Option<UpdateResult>,
    progress: mpsc::Sender<Progress>,
}

impl Updater {
    /// Reads the image's version and RAUC's slot status, and settles an update pending from
    /// before the restart: on its new slot the rig is on trial, on the old one it rolled
    /// back. `progress` is where install tasks report.
    pub async fn open(
        config: UpdateConfig,
        state: StateDir,
        progress: mpsc::Sender<Progress>,
    ) -> Self {
        let image_version = read_optional(&config.image_release)
            .ok()
            .flatten()
            .map(|b| image_version(&String::from_utf8_lossy(&b)))
            .unwrap_or_default();
        let slots = if image_version.is_empty() {
            None
        } else {
            match rauc_status(&config).await {
                Ok(s) => Some(s),
                Err(error) => {
                    tracing::warn!(%error, "RAUC does not answer: this rig takes no updates");
                    None
                }
            }
        };
        let last = read_json::<UpdateResult>(&state, StateFile::UpdateLast);
        let mut updater = Self {
            config,
            state,
            image_version,
            slots,
            now: UpdateState::Idle,
            target: None,
            last,
            progress,
        };
        updater.settle_pending();
        tracing::info!(
            image = %updater.image_version,
            slot = %updater.slot(),
            state = %updater.now,
            "rig image"
        );
        updater
    }

    fn slot(&self) -> &str {
        self.slots.as_ref().map_or("", |s| s.booted.as_str())
    }

    fn settle_pending(&mut self) {
        let Some(pending) = read_json::<Pending>(&self.state, StateFile::UpdatePending) else {
            return;
        };
        if pending.to_slot == self.slot() {
            tracing::info!(version = %pending.version, slot = %pending.to_slot, "booted the updated slot: on trial until rigd is on the broker with its cards");
            self.now = UpdateState::Trial;
            self.target = Some(pending.version);
            return;
        }
        let trials = read_optional(&self.state.file(StateFile::UpdateTrials))
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let detail = rollback_detail(&pending, self.slot(), &trials);
        tracing::error!(version = %pending.version, %detail, "the update rolled back");
        self.finish(&pending.version, false, detail);
    }

    /// Records how the update of `version` ended and forgets it.
    fn finish(&mut self, version: &str, ok: bool, detail: String) {
        let result = UpdateResult {
            version: clip(version, MAX_TEXT),
            ok,
            detail: clip(&detail, MAX_REASON),
            finished_ms: unix_ms(),
        };
        if let Err(error) = serde_json::to_vec(&result)
            .map_err(std::io::Error::other)
            .and_then(|b| self.state.write(StateFile::UpdateLast, &b))
        {
            tracing::error!(%error, "the update's result not recorded");
        }
        for f in [
            StateFile::UpdatePending,
            StateFile::UpdateTrials,
            StateFile::UpdateBundle,
        ] {
            let _ = std::fs::remove_file(self.state.file(f));
        }
        self.last = Some(result);
        self.now = UpdateState::Idle;
        self.target = None;
    }

    /// The retained status of `rig`'s image and updates.
    pub fn status(&self, rig: &RigId) -> UpdateStatus {
        UpdateStatus {
            rig: rig.clone(),
            image_version: clip(&self.image_version, MAX_TEXT),
            slot: clip(self.slot(), MAX_TEXT),
            state: self.now,
            target: self.target.clone(),
            last: self.last.clone(),
            sent_ms: unix_ms(),
        }
    }

    /// The core held the rig for `update` (an [`Action::Update`]) and it has drained: the
    /// install task starts. Err (nothing started) when this rig cannot take updates.
    pub fn begin(&mut self, update: &Action) -> Result<(), String> {
        let Action::Update {
            bundle,
            version,
            sha256,
        } = update
        else {
            return Err("not an update".into());
        };
        let Some(slots) = self.slots.clone() else {
            return Err("this rig runs from no updatable image (no /etc/rigd-image, or RAUC does not answer)".into());
        };
        if self.now != UpdateState::Idle {
            return Err(format!("an update is already under way ({})", self.now));
        }
        self.now = UpdateState::Downloading;
        self.target = Some(version.clone());
        let job = Job {
            config: self.config.clone(),
            bundle: bundle.clone(),
            version: version.clone(),
            sha256: *sha256,
            to: self.state.file(StateFile::UpdateBundle),
            compatible: slots.compatible,
        };
        let progress = self.progress.clone();
        tokio::spawn(async move {
            let done = match job.run(&progress).await {
                Ok(slot) => Progress::Installed { slot },
                Err(reason) => Progress::Failed(reason),
            };
            let _ = progress.send(done).await;
        });
        Ok(())
    }

    /// What the install task reported; on `Installed`, the pending update is recorded and
    /// the reboot asked for. Returns the operator's answer once the update is done with:
    /// Ok (installed, rebooting) or Err (failed, nothing changed).
    pub fn on_progress(&mut self, progress: Progress) -> Option<Result<String, String>> {
        let version = self.target.clone().unwrap_or_default();
        match progress {
            Progress::Installing => {
                self.now = UpdateState::Installing;
                None
            }
            Progress::Installed { slot } => {
                let pending = Pending {
                    version: version.clone(),
                    from_slot: self.slot().to_owned(),
                    to_slot: slot.clone(),
                };
                let recorded = serde_json::to_vec(&pending)
                    .map_err(std::io::Error::other)
                    .and_then(|b| self.state.write(StateFile::UpdatePending, &b));
                if let Err(e) = recorded {
                    let reason = format!("installed into slot {slot}, but not recorded ({e}): no reboot; the next update overwrites it");
                    self.finish(&version, false, reason.clone());
                    return Some(Err(reason));
                }
                let _ = std::fs::remove_file(self.state.file(StateFile::UpdateBundle));
                if let Err(e) = write_atomic(&self.state.file(StateFile::UpdateReboot), b"", 0o644)
                {
                    tracing::error!(error = %e, "reboot not asked for: the update waits for the next boot");
                }
                self.now = UpdateState::Rebooting;
                tracing::info!(%version, %slot, "update installed; rebooting into it");
                Some(Ok(format!(
                    "installed {version} into slot {slot}; rebooting into it"
                )))
            }
            Progress::Failed(reason) => {
                tracing::error!(%version, %reason, "update failed; nothing was installed");
                self.finish(&version, false, reason.clone());
                Some(Err(reason))
            }
        }
    }

    /// On trial, rigd is on the broker with `cards` cards: marks the booted slot good. True
    /// when the status changed.
    pub async fn confirm(&mut self, cards: usize) -> bool {
        if self.now != UpdateState::Trial || cards == 0 {
            return false;
        }
        let version = self.target.clone().unwrap_or_default();
        match rauc(
            &self.config,
            &["status", "mark-good", "booted"],
            RAUC_TIMEOUT,
        )
        .await
        {
            Ok(_) => {
                let detail = format!(
                    "running {version} on slot {}, marked good: READY, on the broker, {cards} cards",
                    self.slot()
                );
                tracing::info!(%version, slot = %self.slot(), "updated slot marked good");
                self.finish(&version, true, detail);
                true
            }
            Err(error) => {
                tracing::error!(%error, "the updated slot could not be marked good; the trial deadline will roll it back");
                false
            }
        }
    }
}

/// One install: fetch, check, install.
struct Job {
    config: UpdateConfig,
    bundle: String,
    version: String,
    sha256: [u8; 32],
    to: PathBuf,
    compatible: String,
}

impl Job {
    async fn run(&self, progress: &mpsc::Sender<Progress>) -> Result<String, String> {
        let url = Url::parse(&self.bundle).map_err(|e| format!("bundle URL: {e}"))?;
        let roots = match &self.config.ca {
            Some(ca) => rigd_client::load_certs(ca).map_err(|e| format!("update CA: {e}"))?,
            None => vec![],
        };
        if let Some(dir) = self.to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let t0 = std::time::Instant::now();
        let got = http::download(
            &url,
            &self.to,
            self.config.max_bundle_mib.saturating_mul(1 << 20),
            Duration::from_secs(self.config.download_timeout_s),
            &roots,
            concat!("rigd/", env!("CARGO_PKG_VERSION")),
        )
        .await
        .map_err(|e| format!("bundle not fetched: {e}"))?;
        tracing::info!(
            bytes = got.bytes,
            ms = t0.elapsed().as_millis() as u64,
            "bundle fetched"
        );
        if got.sha256 != self.sha256 {
            return Err(format!(
                "the bundle's SHA-256 is {}, the command names {}: refused before anything was written",
                hex::encode(got.sha256),
                hex::encode(self.sha256)
            ));
        }
        let path = self.to.to_string_lossy().into_owned();
        let info = rauc(
            &self.config,
            &["info", "--output-format=json", &path],
            RAUC_TIMEOUT,
        )
        .await
        .map_err(|e| format!("bundle refused before anything was written: {e}"))?;
        let (compatible, version) = bundle_info(&info)?;
        if compatible != self.compatible {
            return Err(format!("the bundle is for {compatible}, this rig is {}: refused before anything was written", self.compatible));
        }
        if version != self.version {
            return Err(format!("the bundle holds version {version}, the command names {}: refused before anything was written", self.version));
        }
        let _ = progress.send(Progress::Installing).await;
        let t1 = std::time::Instant::now();
        rauc(&self.config, &["install", &path], INSTALL_TIMEOUT)
            .await
            .map_err(|e| format!("install failed: {e}"))?;
        tracing::info!(ms = t1.elapsed().as_millis() as u64, "bundle installed");
        let slots = rauc_status(&self.config).await?;
        slots
            .primary
            .ok_or_else(|| "installed, but RAUC names no slot to boot next".to_string())
    }
}

/// Runs `rauc ARGS` (with `--conf` when set), its stdout on success; on failure RAUC's last
/// error line.
async fn rauc(config: &UpdateConfig, args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(&config.rauc);
    if let Some(conf) = &config.rauc_conf {
        cmd.arg(format!("--conf={}", conf.display()));
    }
    cmd.args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| format!("rauc {} took over {} s", args[0], timeout.as_secs()))?
        .map_err(|e| format!("{}: {e}", config.rauc.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    Err(rauc_error(&stdout, &String::from_utf8_lossy(&out.stderr)))
}

/// The line of RAUC's output that says why it failed.
fn rauc_error(stdout: &str, stderr: &str) -> String {
    let all = format!("{stdout}\n{stderr}");
    let line = all
        .lines()
        .find_map(|l| l.trim().strip_prefix("LastError: "))
        .or_else(|| {
            all.lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty() && !l.starts_with("rauc-Message"))
        })
        .unwrap_or("rauc failed and said nothing");
    clip(line, MAX_REASON / 2)
}

async fn rauc_status(config: &UpdateConfig) -> Result<Slots, String> {
    let out = rauc(config, &["status", "--output-format=json"], RAUC_TIMEOUT).await?;
    parse_status(&out)
}

/// `rauc status --output-format=json`: compatible, booted bootname, and the bootname of the
/// primary slot.
fn parse_status(json: &str) -> Result<Slots, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("rauc status: {e}"))?;
    let text = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
    let compatible = text("compatible").ok_or("rauc status: no compatible")?;
    let booted = text("booted").ok_or("rauc status: no booted slot")?;
    let primary = text("boot_primary").and_then(|name| {
        v.get("slots")?.as_array()?.iter().find_map(|slot| {
            slot.get(&name)?
                .get("bootname")?
                .as_str()
                .map(str::to_owned)
        })
    });
    Ok(Slots {
        compatible,
        booted,
        primary,
    })
}

/// `rauc info --output-format=json`: compatible and version.
fn bundle_info(json: &str) -> Result<(String, String), String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("rauc info: {e}"))?;
    let text = |key: &str| {
        v.get(key)
            .and_then(|x| x.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("rauc info: no {key}"))
    };
    Ok((text("compatible")?, text("version")?))
}

/// `RIGD_IMAGE_VERSION=...` of `/etc/rigd-image`.
fn image_version(release: &str) -> String {
    release
        .lines()
        .find_map(|l| l.trim().strip_prefix("RIGD_IMAGE_VERSION="))
        .map(|v| clip(v.trim(), MAX_TEXT))
        .unwrap_or_default()
}

/// What an update that rolled back leaves to say: the tries of its slot in the trial log.
fn rollback_detail(pending: &Pending, booted: &str, trials: &str) -> String {
    let to = format!("slot={}", pending.to_slot);
    let tries: Vec<&str> = trials
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == to))
        .collect();
    let mut detail = format!(
        "rolled back to slot {booted}: slot {} with {} was not marked good",
        pending.to_slot, pending.version
    );
    match tries.last() {
        Some(last) => {
            let what = last.split_once(&to).map_or(*last, |(_, rest)| rest.trim());
            detail.push_str(&format!(" in {} tries; the last: {what}", tries.len()));
        }
        None => detail.push_str(" (it never reached the trial check: kernel or boot failure)"),
    }
    detail
}

fn read_json<T: serde::de::DeserializeOwned>(state: &StateDir, file: StateFile) -> Option<T> {
    let bytes = state.read(file).ok().flatten()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(error) => {
            tracing::error!(path = %state.file(file).display(), %error, "update record unreadable; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rauc_status_gives_compatible_booted_and_the_primary_bootname() {
        let json = r#"{"compatible":"rigd-rig-x86_64","variant":"","booted":"A","boot_primary":"rootfs.1","slots":[{"rootfs.1":{"class":"rootfs","bootname":"B","state":"inactive"}},{"rootfs.0":{"class":"rootfs","bootname":"A","state":"booted"}}]}"#;
        assert_eq!(
            parse_status(json),
            Ok(Slots {
                compatible: "rigd-rig-x86_64".into(),
                booted: "A".into(),
                primary: Some("B".into()),
            })
        );
        assert!(parse_status("{}").is_err());
        assert!(parse_status("not json").is_err());
    }

    #[test]
    fn rauc_errors_are_its_last_error_line() {
        let out = " 40% Verifying signature failed.\n100% Installing failed.\nLastError: signature verification failed: Verify error: self-signed certificate\nidle\n";
        assert_eq!(
            rauc_error(out, ""),
            "signature verification failed: Verify error: self-signed certificate"
        );
        assert_eq!(
            rauc_error("", "rauc-Message: x\nFailed to open bundle\n"),
            "Failed to open bundle"
        );
        assert_eq!(rauc_error("", ""), "rauc failed and said nothing");
    }

    #[test]
    fn a_rollback_says_how_many_tries_the_slot_had_and_what_the_last_left() {
        let pending = Pending {
            version: "2.0.0".into(),
            from_slot: "A".into(),
            to_slot: "B".into(),
        };
        let log = "try 1 slot=B reason=failed uptime_s=40 ActiveState=failed Result=exit-code ExecMainStatus=2 last=\"x\"\n\
                   try 2 slot=A reason=deadline uptime_s=300\n\
                   try 3 slot=B reason=failed uptime_s=41 ActiveState=failed Result=exit-code ExecMainStatus=203 last=\"exec failed\"\n";
        let d = rollback_detail(&pending, "A", log);
        assert!(d.starts_with("rolled back to slot A: slot B with 2.0.0 was not marked good in 2 tries; the last: reason=failed"), "{d}");
        assert!(d.contains("ExecMainStatus=203"), "{d}");
        let none = rollback_detail(&pending, "A", "");
        assert!(none.contains("never reached the trial check"), "{none}");
    }

    #[test]
    fn the_image_version_comes_from_its_release_file() {
        assert_eq!(image_version("# x\nRIGD_IMAGE_VERSION=2.0.0\n"), "2.0.0");
        assert_eq!(image_version("nothing"), "");
    }
}
