//! A rig's image and its updates (`rig/{rig}/update`, retained): which image version runs,
//! from which root slot, what the updater is doing, and how the last update ended.
//!
//! rigd publishes it when it starts and at every step of an update
//! ([`crate::command::Action::Update`]); rigctl shows it per rig (`rigctl update-status`) and a
//! canary rollout waits on it.

use crate::frame::Frame;
use crate::ids::RigId;
use crate::messages::MAX_TEXT;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest reason a failed update carries, bytes.
pub const MAX_REASON: usize = 4 * MAX_TEXT;

/// What the updater is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateState {
    /// Nothing: no update under way.
    Idle,
    /// Waiting for running units to finish and receipts to be acknowledged.
    Draining,
    /// Fetching the bundle.
    Downloading,
    /// RAUC writes the other slot.
    Installing,
    /// Installed; the rig reboots into the new slot.
    Rebooting,
    /// Booted the new slot, which is not marked good yet: rigd marks it once it is READY, on
    /// the broker, with its cards.
    Trial,
}

impl UpdateState {
    /// The name rigctl shows.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Idle => "idle",
            UpdateState::Draining => "draining",
            UpdateState::Downloading => "downloading",
            UpdateState::Installing => "installing",
            UpdateState::Rebooting => "rebooting",
            UpdateState::Trial => "trial",
        }
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an update ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateResult {
    /// The version it was to install.
    pub version: String,
    /// Whether the rig runs it now, marked good.
    pub ok: bool,
    /// What happened: the slot it runs from, or why it failed (refused bundle, rolled back
    /// after N tries and what rigd said on the new slot...).
    pub detail: String,
    /// When it ended, Unix ms.
    pub finished_ms: u64,
}

/// On `rig/{rig}/update`, retained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The rig.
    pub rig: RigId,
    /// The image version it runs (`/etc/rigd-image`), empty when it runs from no image.
    pub image_version: String,
    /// The root slot it booted (`A`, `B`), empty when it runs from no image.
    pub slot: String,
    /// What the updater is doing.
    pub state: UpdateState,
    /// The version being installed, while `state` is not idle.
    pub target: Option<String>,
    /// How the last update ended.
    pub last: Option<UpdateResult>,
    /// When this was sent, Unix ms.
    pub sent_ms: u64,
}

impl Frame for UpdateStatus {
    const KIND: u8 = 13;
    const NAME: &'static str = "UpdateStatus";
    fn validate(&self) -> Result<(), String> {
        let short = |what: &str, s: &str| {
            if s.len() > MAX_TEXT {
                Err(format!("{what} over {MAX_TEXT} bytes"))
            } else {
                Ok(())
            }
        };
        short("image_version", &self.image_version)?;
        short("slot", &self.slot)?;
        if let Some(t) = &self.target {
            short("target", t)?;
        }
        if let Some(last) = &self.last {
            short("last version", &last.version)?;
            if last.detail.len() > MAX_REASON {
                return Err(format!("last detail over {MAX_REASON} bytes"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode, FrameError};

    fn status(detail: String) -> UpdateStatus {
        UpdateStatus {
            rig: RigId::new("rig-1").unwrap_or_else(|e| panic!("{e}")),
            image_version: "1.0.0".into(),
            slot: "A".into(),
            state: UpdateState::Idle,
            target: None,
            last: Some(UpdateResult {
                version: "2.0.0".into(),
                ok: false,
                detail,
                finished_ms: 5,
            }),
            sent_ms: 6,
        }
    }

    #[test]
    fn an_update_status_round_trips_and_an_oversized_reason_is_refused() {
        let s = status("rolled back to slot A after 3 tries".into());
        assert_eq!(decode::<UpdateStatus>(&encode(&s)), Ok(s));
        let long = status("x".repeat(MAX_REASON + 1));
        assert!(matches!(
            decode::<UpdateStatus>(&encode(&long)),
            Err(FrameError::Invalid { .. })
        ));
    }
}
