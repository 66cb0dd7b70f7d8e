//! A rogue rig for tests: a genuine identity (its own fleet certificate, so the broker's ACL
//! gives it its own topics) with its own secp256k1 receipt key, speaking the real protocol
//! over mutual TLS, sending whatever a test wants it to: receipts for units it was never
//! leased, invented results, floods.

use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{encode, Ack, RigState, UnitAssignment, WorkUnit};
use rigd_testkit::signer::TestRig;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A rogue rig connected to the broker; its receipt key ([`TestRig`]) through `Deref`.
pub struct Rogue {
    signer: TestRig,
    client: Client,
    /// First sequence numbers of the batches acknowledged, and when.
    acks: Arc<Mutex<Vec<(u64, Instant)>>>,
    units: Arc<Mutex<Vec<WorkUnit>>>,
}

impl std::ops::Deref for Rogue {
    type Target = TestRig;
    fn deref(&self) -> &TestRig {
        &self.signer
    }
}

impl std::ops::DerefMut for Rogue {
    fn deref_mut(&mut self) -> &mut TestRig {
        &mut self.signer
    }
}

impl Rogue {
    /// Connects as `name` with the fleet certificate `tls` and a receipt key made from
    /// `secret`, and listens for its acks and units.
    pub fn connect(port: u16, name: &str, secret: u8, tls: &rigd_client::TlsFiles) -> Self {
        let id = rigd_testkit::fixtures::rig_id(name);
        let mut opts = MqttOptions::new(format!("rogue-{name}"), "127.0.0.1", port);
        opts.set_max_packet_size(Some(2 << 20));
        let config = rigd_client::client_config_from_files(tls).expect("TLS config");
        opts.set_transport(rigd_client::transport(config));
        let (client, mut connection) = Client::new(opts, 256);
        let acks = Arc::new(Mutex::new(vec![]));
        let units = Arc::new(Mutex::new(vec![]));
        let (seen, given, c) = (acks.clone(), units.clone(), client.clone());
        let subscribe = [
            topics::rig(&id, Channel::Acks),
            topics::rig(&id, Channel::Units),
        ];
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for topic in &subscribe {
                            let _ = c.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(ack) = rigd_protocol::decode::<Ack>(&p.payload) {
                            let now = Instant::now();
                            let mut seen = seen.lock().unwrap();
                            seen.extend(ack.batches.iter().map(|b| (b.first_seq, now)));
                        } else if let Ok(a) = rigd_protocol::decode::<UnitAssignment>(&p.payload) {
                            given.lock().unwrap().extend(a.units);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Self {
            signer: TestRig::new(name, secret),
            client,
            acks,
            units,
        }
    }

    /// Units assigned to it since the last call.
    pub fn take_units(&self) -> Vec<WorkUnit> {
        std::mem::take(&mut *self.units.lock().unwrap())
    }

    /// Publishes its retained status: idle, with no cards (so it is leased nothing).
    pub fn announce(&self) {
        self.announce_cards(0);
    }

    /// Publishes its retained status: idle, with `cards` cards (so it is leased units).
    pub fn announce_cards(&self, cards: u32) {
        self.publish(
            Channel::Status,
            true,
            encode(&self.signer.status(cards, RigState::Idle)),
        );
    }

    /// Publishes a frame on its receipts topic.
    pub fn send(&self, payload: Vec<u8>) {
        self.publish(Channel::Receipts, false, payload);
    }

    fn publish(&self, channel: Channel, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(
                topics::rig(&self.id, channel),
                QoS::AtLeastOnce,
                retain,
                payload,
            )
            .unwrap();
    }

    /// First sequence numbers of the batches acknowledged so far.
    pub fn acked(&self) -> Vec<u64> {
        self.acks.lock().unwrap().iter().map(|(s, _)| *s).collect()
    }

    /// When the batch starting at `first_seq` was first acknowledged.
    pub fn acked_at(&self, first_seq: u64) -> Option<Instant> {
        let acks = self.acks.lock().unwrap();
        acks.iter().find(|(s, _)| *s == first_seq).map(|(_, t)| *t)
    }
}
