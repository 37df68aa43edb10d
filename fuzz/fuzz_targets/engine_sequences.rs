//! Random sequences of inputs (frames of every type from the IMS, the core and a peer box, duplicates, deliveries, give-ups, ticks, announcements, re-boots) through a real engine on a real store (`engine::harness`), checked against a model: one access-log entry per frame, refusal and delivery; a refused frame changes nothing else (the one exception: a refused permit closes its process and tells the IMS); a duplicate gets its first reply and changes nothing; no serial is issued twice, across re-boots too; what was accepted is durable (a re-boot loads exactly the state the engine had).
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ifrelay::relay::channel::Peer;
use ifrelay::relay::engine::harness::{Event, Fixture, Harness, Snapshot};
use ifrelay_proto::{
    Accepted, Body, BoxStatus, Frame, PermitRequest, PrefixCheck, ProcessError, Reason, Refused,
    Serial, SerialNotice, SerialPurpose, SerialRequest, SignedPermit, StatusEvent,
};
use libfuzzer_sys::fuzz_target;

/// Most operations of one run: each commits (an fsync), so keep runs short.
const MAX_OPS: usize = 48;

/// 2026-12-01T03:00:00Z, noon in Japan.
const NOON_JST: i64 = 1_796_094_000_000;

/// Reads the input a byte at a time; zeros once it is used up.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn pick<'t, T>(&mut self, items: &'t [T]) -> Option<&'t T> {
        let b = self.next();
        (!items.is_empty()).then(|| &items[usize::from(b) % items.len()])
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the model remembers across the run.
#[derive(Default)]
struct Model {
    /// Serials the box issued, in order.
    issued: Vec<Serial>,
    /// Provider-side serials the core has named.
    provider: Vec<Serial>,
    /// Every frame sent and the reply it first got (accepted ones are
    /// answered alike when sent again).
    sent: Vec<(Peer, Frame, Body)>,
    /// Replies of accepted frames by (sender, id).
    accepted: HashMap<(String, String), Body>,
    /// Permits the core issued, by serial.
    permits: HashMap<Serial, SignedPermit>,
    next_provider: u64,
}

struct Run {
    h: Harness,
    f: Fixture,
    m: Model,
}

impl Run {
    fn snapshot(&self) -> Snapshot {
        self.h.snapshot().expect("snapshot")
    }

    /// Sends one frame in a batch of its own and checks the invariants of
    /// a single frame.
    fn frame(&mut self, peer: Peer, frame: Frame) {
        let key = (format!("{:?}", peer.party), frame.header.id.to_string());
        let before = self.snapshot();
        let reply = self.h.send_frame(&peer, frame.clone());
        let after = self.snapshot();
        assert_eq!(after.access, before.access + 1, "one entry per frame");
        let first = self.m.accepted.get(&key).cloned();
        let same_frame = self
            .m
            .sent
            .iter()
            .any(|(p, f, _)| p.party == peer.party && *f == frame);
        match (&reply, first) {
            (_, Some(first)) if same_frame => {
                assert_eq!(reply, first, "a duplicate gets its first reply");
                assert_eq!(
                    after.but_access(&before),
                    before,
                    "a duplicate changed state"
                );
            }
            (Body::Refused(r), _) => self.refused(&frame, r, &before, &after),
            (reply, _) => {
                assert!(!matches!(reply, Body::Refused(_)), "a fresh accepted frame");
                assert_eq!(
                    after.seen,
                    before.seen + 1,
                    "accepted frames are remembered"
                );
                if let Body::SerialIssued(s) = reply {
                    assert!(
                        !self.m.issued.contains(&s.serial),
                        "serial {} issued twice",
                        s.serial
                    );
                    self.m.issued.push(s.serial.clone());
                }
                self.m.accepted.insert(key, reply.clone());
            }
        }
        self.m.sent.push((peer, frame, reply));
    }

    fn refused(&self, frame: &Frame, r: &Refused, before: &Snapshot, after: &Snapshot) {
        // A permit the box refuses closes its process and tells the IMS
        // (R-PRM-2, R-COM-2): the one refusal with effects.
        if let Body::Permit(p) = &frame.body {
            if before.processes.contains_key(&p.serial) && !after.processes.contains_key(&p.serial)
            {
                assert_eq!(after.outbox.len(), before.outbox.len() + 1, "{r:?}");
                let mut expected = before.clone();
                expected.processes.remove(&p.serial);
                expected.stored_processes -= 1;
                expected.outbox = after.outbox.clone();
                assert_eq!(after.but_access(&expected), expected, "{r:?}");
                return;
            }
        }
        assert_eq!(
            after.but_access(before),
            *before,
            "refused {} ({}: {}) changed state",
            frame.body.type_name(),
            r.reason,
            r.text
        );
    }

    /// Runs events that carry no frame in one batch and checks the
    /// access-log count.
    fn events(&mut self, events: Vec<Event>) {
        let logged = events
            .iter()
            .filter(|e| matches!(e, Event::Delivered(..) | Event::Refused { .. }))
            .count() as u64;
        let before = self.snapshot();
        self.h.run(events);
        let after = self.snapshot();
        assert_eq!(after.access, before.access + logged, "one entry per input");
    }

    /// Re-boots and checks that the new engine loads exactly what the old
    /// one had: nothing accepted was only in memory.
    fn reboot(mut self) -> Run {
        let before = self.snapshot();
        self.h = self.h.reboot().expect("reboot");
        let after = self.snapshot();
        assert!(after.epoch > before.epoch, "a new epoch per boot");
        assert_eq!(
            Snapshot {
                epoch: before.epoch,
                ..after
            },
            before,
            "memory ran ahead of the store"
        );
        self
    }
}

fn notice(serial: &Serial) -> SerialNotice {
    SerialNotice {
        serial: serial.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir");
    let f = Fixture::new();
    let mut h = Harness::open(&dir.path().join("engine.redb"), f.config()).expect("boot");
    h.set_now(NOON_JST);
    let mut run = Run {
        h,
        f,
        m: Model::default(),
    };
    for _ in 0..MAX_OPS {
        if b.is_empty() {
            break;
        }
        run = step(run, &mut b);
    }
    // Whatever happened, the store holds what the engine had.
    let run = run.reboot();
    let chains = run.h.reader().verify_chains().expect("verify");
    assert!(chains.is_intact(), "{chains:?}");
});

fn step(mut run: Run, b: &mut Bytes<'_>) -> Run {
    let (ims, core, other) = (run.f.ims(), run.f.core(), run.f.other_box());
    let own = run.m.issued.clone();
    let provider = run.m.provider.clone();
    let any: Vec<Serial> = own.iter().chain(&provider).cloned().collect();
    let op = b.next() % 24;
    // Requester-side messages name one of the box's serials; a few bytes
    // decide which, and whether the prefix is the right one.
    let serial = b.pick(&own).cloned();
    let prefix = if b.next() % 8 == 0 {
        run.f.reverse_prefix()
    } else {
        run.f.prefix()
    };
    let body = match (op, serial) {
        (0, _) => Some((
            ims.clone(),
            Body::SerialRequest(SerialRequest {
                purpose: if b.next() % 4 == 0 {
                    SerialPurpose::CodeIssue
                } else {
                    SerialPurpose::Query
                },
            }),
        )),
        (1, Some(serial)) => Some((
            ims.clone(),
            Body::PrefixCheck(PrefixCheck { serial, prefix }),
        )),
        (2, Some(serial)) => Some((
            ims.clone(),
            Body::PermitRequest(PermitRequest { serial, prefix }),
        )),
        (3, Some(serial)) => {
            let now = run.h.now();
            let mut fields = run
                .f
                .permit_fields(&serial, &prefix, now, Duration::from_secs(60));
            match b.next() % 6 {
                0 => fields.expires_at = now - 1,
                1 => fields.route.agency = run.f.other.clone(),
                2 => fields.provider_route.endpoint = "10.9.9.9:1".into(),
                _ => {}
            }
            let mut permit = run.f.sign(&fields);
            if b.next() % 8 == 0 {
                permit.sig[0] ^= 1;
            }
            run.m.permits.insert(serial.clone(), permit.clone());
            Some((core.clone(), Fixture::permit_issued(&serial, &permit)))
        }
        (4, Some(serial)) => {
            let permit = permit_of(&run.m, &serial);
            Some((
                ims.clone(),
                Body::Query(Fixture::query(&serial, &prefix, &permit)),
            ))
        }
        (5, Some(serial)) => Some((core.clone(), Body::QueryAccepted(notice(&serial)))),
        (6, Some(serial)) => {
            let permit = permit_of(&run.m, &serial);
            Some((
                other.clone(),
                Body::Provision(Fixture::provision(&serial, &prefix, &permit)),
            ))
        }
        (7, Some(serial)) => Some((ims.clone(), Body::ProvisionReceived(notice(&serial)))),
        (8, Some(serial)) => Some((ims.clone(), Body::QueryComplete(notice(&serial)))),
        (9, _) => b
            .pick(&any)
            .map(|s| (ims.clone(), Body::ProvisionComplete(notice(s)))),
        (10, _) => {
            // The core brings a query: a new provider-side serial, or a
            // known one again.
            let serial = if b.next() % 4 == 0 && !provider.is_empty() {
                b.pick(&provider).cloned().expect("not empty")
            } else {
                run.m.next_provider += 1;
                let s: Serial = format!("271004-20261201-1-{}", run.m.next_provider)
                    .parse()
                    .expect("serial");
                run.m.provider.push(s.clone());
                s
            };
            let prefix = run.f.reverse_prefix();
            let now = run.h.now();
            let permit = run.f.permit(&serial, &prefix, now);
            run.m.permits.insert(serial.clone(), permit.clone());
            Some((
                core.clone(),
                Body::Query(Fixture::query(&serial, &prefix, &permit)),
            ))
        }
        (11, _) => b
            .pick(&provider)
            .map(|s| (ims.clone(), Body::QueryAccepted(notice(s)))),
        (12, _) => b.pick(&provider).cloned().map(|s| {
            let permit = permit_of(&run.m, &s);
            let prefix = run.f.reverse_prefix();
            (
                ims.clone(),
                Body::Provision(Fixture::provision(&s, &prefix, &permit)),
            )
        }),
        (13, _) => b
            .pick(&provider)
            .map(|s| (other.clone(), Body::ProvisionReceived(notice(s)))),
        (14, _) => {
            let from = b.pick(&[ims.clone(), core.clone(), other.clone()]).cloned();
            b.pick(&any).cloned().zip(from).map(|(serial, from)| {
                (
                    from,
                    Body::ProcessError(ProcessError {
                        serial,
                        reason: Reason::Internal,
                        text: "fuzz".into(),
                    }),
                )
            })
        }
        (15, _) => b.pick(&[core.clone(), other.clone()]).cloned().map(|from| {
            (
                from,
                Body::BoxStatus(BoxStatus {
                    event: StatusEvent::Stopping,
                }),
            )
        }),
        (16, _) => Some((
            core.clone(),
            Body::Distribution(run.f.distribution(u64::from(b.next() % 4))),
        )),
        (17, _) => {
            // Resend an earlier frame, byte for byte.
            let sent: Vec<(Peer, Frame)> = run
                .m
                .sent
                .iter()
                .map(|(p, f, _)| (p.clone(), f.clone()))
                .collect();
            if let Some((peer, frame)) = b.pick(&sent).cloned() {
                run.frame(peer, frame);
            }
            None
        }
        (18, _) => {
            let secs = u64::from(b.next()) * 2;
            run.h.advance(Duration::from_secs(secs));
            run.events(vec![Event::Tick]);
            None
        }
        (19, _) => {
            // The next hops answer some of the outbox, in one batch.
            let outbox = run.h.outbox().expect("outbox");
            let n = usize::from(b.next() % 4) + 1;
            // One byte per answer whether or not the entry exists, so
            // the bytes after stay aligned.
            let refuse: Vec<bool> = (0..n).map(|_| b.next() % 4 == 0).collect();
            let mut events = Vec::new();
            for ((item, frame), refuse) in outbox.into_iter().zip(refuse) {
                let reply = if refuse {
                    Body::Refused(Refused {
                        in_reply_to: Some(frame.header.id.clone()),
                        reason: Reason::OutOfSequence,
                        text: "fuzz".into(),
                    })
                } else {
                    Body::Accepted(Accepted {
                        in_reply_to: frame.header.id.clone(),
                    })
                };
                events.push(Event::Delivered(item, reply));
            }
            run.events(events);
            None
        }
        (20, _) => {
            let outbox = run.h.outbox().expect("outbox");
            if let Some((item, _)) = b.pick(&outbox).cloned() {
                run.events(vec![Event::Undeliverable(item)]);
            }
            None
        }
        (21, _) => {
            run.events(vec![
                Event::Announce(StatusEvent::Started),
                Event::Refused {
                    terminal: SocketAddr::from(([192, 0, 2, 1], 9)),
                    reason: Reason::Identity,
                },
            ]);
            None
        }
        (22, _) => return run.reboot(),
        (23, _) => {
            // A frame on the wrong listener, or claiming another sender.
            let body = Body::QueryAccepted(notice(
                &any.first()
                    .cloned()
                    .unwrap_or_else(|| "131016-20261201-1-1".parse().expect("serial")),
            ));
            let mut frame = run.h.frame(&core.party, body);
            if b.next() % 2 == 0 {
                frame.header.from = ims.party.clone();
            }
            run.frame(other.clone(), frame);
            None
        }
        _ => None,
    };
    if let Some((peer, body)) = body {
        let frame = run.h.frame(&peer.party, body);
        run.frame(peer, frame);
    }
    run
}

/// The permit the core issued for `serial`, or one nobody issued.
fn permit_of(m: &Model, serial: &Serial) -> SignedPermit {
    m.permits.get(serial).cloned().unwrap_or(SignedPermit {
        signed: vec![0xa0],
        sig: vec![0; 64],
    })
}
