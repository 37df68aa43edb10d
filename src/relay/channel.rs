//! What travels between the listeners, the engine and delivery: the
//! engine's inputs and the answers it sends back.
//!
//! This module sits below all three so that none of them imports another
//! for the types they exchange: listeners and delivery workers build
//! [`Input`]s, the engine consumes them and sends [`Notice`]s and
//! [`Verdict`]s. It holds types only, no behaviour.

use std::net::SocketAddr;

use ifrelay_proto::{Body, Frame, MessageId, Party, Reason, StatusEvent};
use ifrelay_store::{AccessEntry, Direction};
use tokio::sync::oneshot;

use super::destination::{Destination, OutboxItem};

/// Which listener a frame arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Core system and peer interface systems.
    CoreSide,
    /// The agency's own intermediate server.
    AgencySide,
}

/// Who sent a frame: the party its certificate names, and from where.
#[derive(Debug, Clone)]
pub struct Peer {
    pub party: Party,
    pub addr: SocketAddr,
    pub listener: Listener,
}

/// What the engine is asked to do.
#[derive(Debug)]
pub enum Input {
    /// A decoded frame from an authenticated peer; the reply body goes back
    /// on `reply` after commit.
    Frame(Box<FrameInput>),
    /// Something refused before it reached the engine (undecodable frame,
    /// identity mismatch, refused connection): logged only.
    Refused {
        terminal: SocketAddr,
        party: Option<Party>,
        direction: Direction,
        operation: String,
        message_id: Option<MessageId>,
        reason: Reason,
    },
    /// A delivery worker got the next hop's answer to an outbox entry.
    Delivered(Box<Delivery>),
    /// A second has passed: close processes whose step timed out.
    Tick,
    /// Announce a lifecycle event to the core and the IMS (R-COM-3);
    /// `done` hears `accepted` once the notices are durable.
    Announce {
        event: StatusEvent,
        done: Option<oneshot::Sender<Body>>,
    },
    /// Delivery tried an entry `retry_count` times without reaching the
    /// next hop; the engine decides whether to give it up.
    Undeliverable(Box<Undeliverable>),
    /// The maintenance console stores or removes accounts and appends its
    /// access-log entry, in one batch; `done` hears `accepted` once it
    /// is durable, or the store's refusal.
    Console(Box<ConsoleWrite>),
    /// Stop after the current batch.
    Stop,
}

/// What the console writes in one batch.
#[derive(Debug)]
pub struct ConsoleWrite {
    /// Accounts to store (`Some`: the encoded account) or remove (`None`).
    pub users: Vec<(String, Option<Vec<u8>>)>,
    pub access: Option<AccessEntry>,
    /// A deletion of the records appended before this time, confirmed at
    /// the console (R-REC-4); the engine never deletes inside the period.
    pub delete_records_before: Option<ifrelay_proto::Millis>,
    pub done: oneshot::Sender<Body>,
}

/// A frame from an authenticated peer, and where its answer goes.
#[derive(Debug)]
pub struct FrameInput {
    pub peer: Peer,
    pub frame: Frame,
    pub reply: oneshot::Sender<Body>,
}

/// The next hop's answer to an outbox entry.
#[derive(Debug)]
pub struct Delivery {
    pub item: OutboxItem,
    pub terminal: SocketAddr,
    pub reply: Body,
}

/// An entry delivery could not get through.
#[derive(Debug)]
pub struct Undeliverable {
    pub item: OutboxItem,
    pub verdict: oneshot::Sender<Verdict>,
}

/// What delivery does with an entry it could not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its process was closed and the parties told; the entry is gone.
    GiveUp,
    /// No open process depends on it: keep resending (R-COM-4).
    Keep,
}

/// What the engine tells delivery after a commit.
#[derive(Debug, Clone)]
pub enum Notice {
    /// New entries for this destination are durable.
    Wake(Destination),
    /// A commit failed: entries whose delivery was not recorded are still
    /// in the outbox; every worker reads its outbox again from the start
    /// (the next hop drops what it already has by message id).
    Rewind,
}
