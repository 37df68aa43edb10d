//! The relay: the engine that owns process state and the store, the TLS
//! listeners that feed it, and the delivery workers that drain its outbox.
//!
//! Data flow: listener → [`channel::Input`] (bounded channel) → engine
//! thread (one write transaction per batch, then replies) → outbox items →
//! [`delivery`] workers → next hop → [`channel::Input::Delivered`].
//!
//! Modules depend only downwards (the supervisor is above them all):
//! `server`, `delivery` and `engine` use `channel`; `server` also uses
//! `admission`, `rates` and `refusal_log` (which uses `channel` and
//! `destination`); `channel` uses
//! `destination`; `engine` also uses `hours`, `jst` and `process`;
//! `hours` uses `jst`; `jst`, `process` and `destination` use no other
//! relay module. `crate::net` (framing and links) uses none of them.

pub mod admission;
pub mod channel;
pub mod delivery;
pub mod destination;
pub mod engine;
pub mod hours;
pub mod jst;
pub mod process;
pub mod rates;
pub mod refusal_log;
pub mod server;
