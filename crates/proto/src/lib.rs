//! The wire protocol of ifrelay, with no I/O: domain types, the frame codec
//! (4-byte big-endian length + one CBOR map), the message types of every
//! flow and the personal-data screen applied to plaintext headers.
//!
//! `docs/protocol.md` is the normative description; this crate implements it.

pub mod frame;
pub mod message;
pub mod reason;
pub mod screen;
pub mod types;

pub use message::*;
pub use reason::Reason;
pub use types::*;
