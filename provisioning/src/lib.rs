//! `rig-provisioner`: the fleet CA, the broker's mTLS + ACL configuration, the rig registry
//! and the claim service that turns a claim token and a CSR into a rig identity. The registry
//! also holds the owners: every rig belongs to the owner its claim was created for.

pub mod broker;
pub mod ca;
pub mod password;
pub mod provisioner;
pub mod registry;
pub mod service;
