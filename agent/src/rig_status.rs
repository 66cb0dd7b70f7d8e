//! What the rig says about itself: its retained status (also the STATUS line's source) and
//! telemetry.

use super::Rig;
use crate::keys::KeyStore;
use crate::worker::unix_ms;
use rigd_protocol::topics::Channel;
use rigd_protocol::{encode, RigId, RigState, RigStatus, Telemetry};
use rumqttc::v5::mqttbytes::QoS;

/// The status of a rig that is not working (yet, or any more).
pub(super) fn offline_status(rig: &RigId, key: &dyn KeyStore, started_ms: u64) -> RigStatus {
    RigStatus {
        rig: rig.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        pubkey: key.public_key(),
        key_backend: key
            .describe()
            .chars()
            .take(rigd_protocol::MAX_TEXT)
            .collect(),
        key_health: key.health(),
        state: RigState::Offline,
        cards: vec![],
        units_running: 0,
        units_queued: 0,
        seq_journaled: 0,
        receipts_unacked: 0,
        started_ms,
        sent_ms: started_ms,
    }
}

impl Rig {
    pub(super) fn status(&self, state: RigState) -> RigStatus {
        let stats = self.stats();
        let mut s = offline_status(&self.rig, self.key.as_ref(), self.started_ms);
        s.state = state;
        s.cards = self.core.inventory();
        s.units_running = self.core.running() as u32;
        s.units_queued = self.core.queued() as u32;
        s.seq_journaled = stats.last_seq;
        s.receipts_unacked = stats.unacked_receipts;
        s.sent_ms = unix_ms();
        s
    }

    pub(super) fn publish_status(&self, state: RigState) {
        self.link.publish(
            Channel::Status,
            QoS::AtLeastOnce,
            true,
            encode(&self.status(state)),
        );
    }

    /// The retained status of the rig's image and updates.
    pub(super) fn publish_update(&self) {
        self.link.publish(
            Channel::Update,
            QoS::AtLeastOnce,
            true,
            encode(&self.updater.status(&self.rig)),
        );
    }

    pub(super) fn publish_telemetry(&mut self) {
        let msg = Telemetry {
            rig: self.rig.clone(),
            at_ms: unix_ms(),
            gpus: self.core.samples(self.now_ms()),
        };
        self.link
            .publish(Channel::Telemetry, QoS::AtMostOnce, true, encode(&msg));
        self.publish_status(self.core.state());
    }
}
