//! `rigd-dashboard`: the owners' side of the fleet. An owner logs in with the password the
//! provisioner gave them and sees only their own rigs (as the broker last heard them), their
//! earnings per day, rig and card (from the ledger's daily rollup), and their receipts and
//! disputes with reasons they can read, as a page that refreshes itself and as a JSON API;
//! and alerts (a rig offline, a card quarantined or too hot, a rig not earning) are posted to
//! the owner's webhook, signed.

pub mod alerts;
pub mod auth;
pub mod data;
pub mod http;
pub mod reasons;
pub mod watch;
pub mod webhook;
