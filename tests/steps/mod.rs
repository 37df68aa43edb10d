//! Steps shared by the engine's in-process tests (`tests/engine.rs`,
//! `tests/distribution.rs`): boot a harness on a temp store at a fixed
//! clock, deliver the outbox, issue a serial, and check replies.

#![allow(dead_code)] // each test file uses its own part

use ifrelay::relay::destination::Destination;
use ifrelay::relay::engine::harness::{Event, Fixture, Harness};
use ifrelay_proto::{Accepted, Body, Reason, Serial, SerialPurpose, SerialRequest};
use tempfile::TempDir;

/// 2026-12-01T03:00:00Z, noon in Japan.
pub const NOON_JST: i64 = 1_796_094_000_000;

pub fn boot() -> (TempDir, Harness, Fixture) {
    let dir = tempfile::tempdir().expect("temp dir");
    let f = Fixture::new();
    let mut h = Harness::open(&dir.path().join("ifrelay.redb"), f.config()).expect("boot");
    h.set_now(NOON_JST);
    (dir, h, f)
}

pub fn assert_accepted(reply: &Body) {
    assert!(
        matches!(reply, Body::Accepted(_)),
        "not accepted: {reply:?}"
    );
}

pub fn assert_refused(reply: &Body, reason: Reason) {
    match reply {
        Body::Refused(r) => assert_eq!(r.reason, reason, "{}", r.text),
        other => panic!("expected {reason}, got {other:?}"),
    }
}

/// Answers every outbox entry `accepted`, as the next hops would, in one
/// batch; returns what was in the outbox.
pub fn deliver_all(h: &mut Harness) -> Vec<(Destination, Body)> {
    let entries = h.outbox().expect("outbox");
    let events = entries
        .iter()
        .map(|(item, frame)| {
            let ack = Body::Accepted(Accepted {
                in_reply_to: frame.header.id.clone(),
            });
            Event::Delivered(item.clone(), ack)
        })
        .collect();
    h.run(events);
    assert!(
        h.outbox().expect("outbox").is_empty(),
        "deliveries recorded"
    );
    entries
        .into_iter()
        .map(|(item, frame)| (item.destination, frame.body))
        .collect()
}

pub fn types(entries: &[(Destination, Body)]) -> Vec<(Destination, &'static str)> {
    entries
        .iter()
        .map(|(d, b)| (d.clone(), b.type_name()))
        .collect()
}

pub fn issue(h: &mut Harness, f: &Fixture) -> Serial {
    let r = h.send(
        &f.ims(),
        Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        }),
    );
    match r {
        Body::SerialIssued(s) => s.serial,
        other => panic!("no serial: {other:?}"),
    }
}
