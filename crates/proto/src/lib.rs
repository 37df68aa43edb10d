//! The wire protocol of ifrelay, with no I/O: domain types, the frame codec
//! (4-byte big-endian length + one CBOR map), the message types of every
//! flow, the personal-data screen applied to plaintext headers, and permit
//! verification (the one place that decides whether a core-signed permit
//! is good).
//!
//! `docs/protocol.md` is the normative description; this crate implements it.

pub mod distribution;
pub mod frame;
pub mod message;
pub mod permit;
pub mod reason;
pub mod refusal;
pub mod scan;
pub mod screen;
pub mod types;

pub use distribution::DistributionError;
pub use message::*;
pub use permit::PermitError;
pub use reason::Reason;
pub use types::*;
