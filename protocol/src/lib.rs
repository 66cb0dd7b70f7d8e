//! Wire types shared by rigd, the coordinator and rigctl. No I/O.
//!
//! - [`frame`]: every MQTT payload is a versioned frame: `[version][kind][postcard body]`,
//!   its length capped before anything is decoded.
//! - [`topics`]: the MQTT topic names.
//! - [`ids`]: validated identifiers (`RigId`, `GpuUuid`, `JobId`).
//! - [`messages`]: the messages carried on each topic.
//! - [`receipt`]: the work receipt, its EIP-712 digest and the Merkle batch it is signed in.
//! - [`command`]: signed operator commands and their replies.
//! - [`credit`]: the network's signed credit statements, which disputes prove on chain.
//! - [`crypto`]: public keys, signatures and their verification (secp256k1, P-256).
//! - [`verify`]: checking one receipt with its proof, batch header, signature and key.
//! - [`address`]: Ethereum payout addresses, checked per EIP-55.
//! - [`owner_api`]: the owners' dashboard API answers that rigctl reads.
//! - [`update`]: a rig's image version, root slot and the state of its last update.

pub mod address;
pub mod claim;
pub mod command;
pub mod credit;
pub mod crypto;
pub mod digest;
pub mod frame;
pub mod ids;
pub mod merkle;
pub mod messages;
pub mod owner_api;
pub mod receipt;
pub mod topics;
pub mod units;
pub mod update;
pub mod verify;

pub use address::{AddressError, EthAddress};
pub use command::{Action, ActionKind, Command, CommandReply, Outcome, Rejection};
pub use credit::CreditStatement;
pub use crypto::{PublicKey, Signature, VerifyError};
pub use frame::{decode, encode, Frame, FrameError, MAX_FRAME_BYTES, WIRE_VERSION};
pub use ids::{GpuUuid, IdError, JobId, RigId};
pub use messages::*;
pub use receipt::{BatchHeader, Domain, Receipt, ReceiptItem};
pub use units::{UnitKind, UnitOutput, WorkUnit};
