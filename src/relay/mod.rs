//! The relay: the engine that owns process state and the store, the TLS
//! listeners that feed it, and the delivery workers that drain its outbox.
//!
//! Data flow: listener → [`engine::Input`] (bounded channel) → engine
//! thread (one write transaction per batch, then replies) → outbox items →
//! [`delivery`] workers → next hop → [`engine::Input::Delivered`].

pub mod delivery;
pub mod destination;
pub mod engine;
pub mod hours;
pub mod process;
pub mod server;
