//! Access-log entries (R-REC-5): one per frame received, one per frame
//! delivered, one per refusal noted before the engine.
//!
//! Invariant: the entry of an input is written in the same commit as the
//! input's effects, and a hop reply is recorded as the outcome of the
//! entry of the frame it answers, never as an entry of its own.
//! Entries name the business, information and items of a prefix but never
//! a person: no code, no body.

use std::net::SocketAddr;

use ifrelay_proto::{AgencyCode, Body, Frame, MessageId, Millis, Party, Reason};
use ifrelay_store::{AccessEntry, Direction};

use crate::relay::channel::Peer;
use crate::relay::destination::{party_label, OutboxItem};

/// The entry of a frame received from `peer`, with its outcome.
pub(super) fn frame_in(now: Millis, peer: &Peer, frame: &Frame, outcome: String) -> AccessEntry {
    let prefix = frame.body.prefix();
    AccessEntry {
        at: now,
        terminal: peer.addr.to_string(),
        party: party_label(&peer.party),
        agency: peer.party.agency.clone(),
        staff: None,
        direction: Direction::In,
        operation: frame.body.type_name().to_owned(),
        message_id: Some(frame.header.id.to_string()),
        serial: frame.body.serial().cloned(),
        business: prefix.map(|p| p.business.clone()),
        info_name: prefix.map(|p| p.info_name.clone()),
        items: prefix
            .map(|p| p.items.iter().cloned().collect())
            .unwrap_or_default(),
        outcome,
    }
}

/// The outcome recorded for a frame the engine handled: the prefix
/// check's verdict, or `accepted`.
pub(super) fn outcome_of(reply: &Body) -> String {
    match reply {
        Body::PrefixResult(r) if !r.ok => r
            .reason
            .map_or_else(|| "ng".to_owned(), |r| format!("ng:{r}")),
        Body::PrefixResult(_) => "ok".to_owned(),
        _ => "accepted".to_owned(),
    }
}

/// The entry of something refused before it reached the engine.
pub(super) fn refused_before(
    now: Millis,
    terminal: SocketAddr,
    party: Option<Party>,
    direction: Direction,
    operation: String,
    message_id: Option<MessageId>,
    reason: Reason,
) -> AccessEntry {
    AccessEntry {
        at: now,
        terminal: terminal.to_string(),
        party: party
            .as_ref()
            .map_or_else(|| "unauthenticated".to_owned(), party_label),
        agency: party.and_then(|p| p.agency),
        staff: None,
        direction,
        operation,
        message_id: message_id.map(String::from),
        serial: None,
        business: None,
        info_name: None,
        items: Vec::new(),
        outcome: reason.to_string(),
    }
}

/// The entry of an outbox entry the next hop answered: `delivered`, or
/// the next hop's reason when it refused.
pub(super) fn delivered(
    now: Millis,
    own: &AgencyCode,
    item: &OutboxItem,
    terminal: SocketAddr,
    reply: &Body,
) -> AccessEntry {
    let outcome = match reply {
        Body::Refused(r) => r.reason.to_string(),
        _ => "delivered".to_owned(),
    };
    let meta = &item.meta;
    AccessEntry {
        at: now,
        terminal: terminal.to_string(),
        party: item.destination.party_label(own),
        agency: item.destination.agency(own),
        staff: None,
        direction: Direction::Out,
        operation: meta.message_type.as_str().to_owned(),
        message_id: Some(meta.message_id.to_string()),
        serial: meta.serial.clone(),
        business: meta.prefix.as_ref().map(|p| p.business.clone()),
        info_name: meta.prefix.as_ref().map(|p| p.info_name.clone()),
        items: meta
            .prefix
            .as_ref()
            .map(|p| p.items.iter().cloned().collect())
            .unwrap_or_default(),
        outcome,
    }
}
