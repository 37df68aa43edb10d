//! Random sequences of inputs (frames of every type from the IMS, the core and a peer box, duplicates, deliveries, give-ups, ticks, announcements, re-boots, and store failures) through a real engine on a store in memory that fails on command (`engine::harness`, `Harness::on_faulty_store`), checked against a model: one access-log entry per frame, refusal and delivery; a refused frame changes nothing else (the one exception: a refused permit closes its process and tells the IMS); a duplicate gets its first reply and changes nothing; no serial is issued twice, across failed commits and re-boots too; what was accepted is durable (a re-boot loads exactly the state the engine had).
//!
//! Store failures: a batch of one to four of those inputs runs with a fault armed — a full disk, write errors, one write failing after `n` others, or one failed sync — cleared after the batch (a full disk or write errors sometimes last one more batch, whose reload then fails too). A full disk and write errors fail the commit cleanly (the new header never becomes valid on disk): every frame of the batch is answered `E_STORE` naming it (saying "disk is full" exactly when it is), a give-up is not given up, an announcement is not accepted, and once the store is back — reloaded in place before the next batch (with one rewind of delivery) or reopened by a restart — the state is exactly the one before the batch, access log included, in a newer epoch; a serial request then gets a new serial. **A failed sync is ambiguous** (docs/architecture.md, "Not done yet": the batch may be on disk), so for it the target accepts either outcome but nothing in between: nothing of the batch kept, or all of it (the access log grew by the batch's entries), and then the model learns the replies the store remembers for its frames and a restart must load what the engine has. A fault that never fired (or that redb absorbed) leaves a batch that committed, checked as one.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ifrelay::relay::channel::{Peer, Verdict};
use ifrelay::relay::engine::harness::{
    Event, FaultSwitch, Fixture, Harness, MemoryFile, Outcome, Snapshot,
};
use ifrelay_proto::{
    Accepted, Body, BoxStatus, Frame, PermitRequest, Prefix, PrefixCheck, ProcessError, Reason,
    Refused, Serial, SerialNotice, SerialPurpose, SerialRequest, SignedPermit, StatusEvent,
};
use libfuzzer_sys::fuzz_target;

/// Most operations of one run: each commits at least once, so keep runs
/// short.
const MAX_OPS: usize = 48;

/// Operations: 0..=21 and 23 make inputs, 22 re-boots, 24 is a batch on a
/// failing store.
const OPS: u8 = 25;
const REBOOT: u8 = 22;
const FAULTY_BATCH: u8 = 24;

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
    faults: FaultSwitch,
}

/// The fault armed for one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Every write, and every `set_len` that grows the store, fails with
    /// `ENOSPC` until cleared.
    DiskFull,
    /// Every write and `set_len` fails with `EIO` until cleared.
    WriteErrors,
    /// The write after the next `n` fails once.
    WriteAfter(u64),
    /// The next sync fails once: the ambiguous one.
    NextSync,
}

impl Fault {
    fn arm(self, s: &FaultSwitch) {
        match self {
            Fault::DiskFull => s.set_disk_full(true),
            Fault::WriteErrors => s.set_write_errors(true),
            Fault::WriteAfter(n) => s.fail_write_after(n),
            Fault::NextSync => s.fail_next_sync(),
        }
    }

    /// Whether it lasts until cleared.
    fn sticky(self) -> bool {
        matches!(self, Fault::DiskFull | Fault::WriteErrors)
    }
}

/// Access-log entries a committed batch of `events` writes.
fn logged(events: &[Event]) -> u64 {
    events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Frame(..) | Event::Delivered(..) | Event::Refused { .. }
            )
        })
        .count() as u64
}

fn serial_request() -> Body {
    Body::SerialRequest(SerialRequest {
        purpose: SerialPurpose::Query,
    })
}

/// The frame was refused `E_STORE`, naming it; the text says the disk is
/// full exactly when `full`.
fn assert_store_refusal(reply: Option<&Body>, frame: &Frame, full: bool) {
    match reply {
        Some(Body::Refused(r)) => {
            assert_eq!(
                r.reason,
                Reason::Store,
                "{}: {}",
                frame.body.type_name(),
                r.text
            );
            assert_eq!(r.in_reply_to.as_ref(), Some(&frame.header.id), "{r:?}");
            assert_eq!(r.text.contains("disk is full"), full, "{}", r.text);
        }
        other => panic!(
            "{} in a failed batch got {other:?}, not E_STORE",
            frame.body.type_name()
        ),
    }
}

impl Run {
    fn snapshot(&self) -> Snapshot {
        self.h.snapshot().expect("snapshot")
    }

    /// Sends one frame in a batch of its own and checks the invariants of
    /// a single frame.
    fn frame(&mut self, peer: Peer, frame: Frame) {
        let key = key(&peer, &frame);
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
                self.accepted(key, reply);
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
        let logged = logged(&events);
        let before = self.snapshot();
        self.h.run(events);
        let after = self.snapshot();
        assert_eq!(after.access, before.access + logged, "one entry per input");
    }

    /// Checks a committed batch of any inputs against the model, frame by
    /// frame in batch order, and teaches the model its replies.
    fn committed(&mut self, events: &[Event], out: &[Outcome], before: &Snapshot) {
        let after = self.snapshot();
        assert_eq!(
            after.access,
            before.access + logged(events),
            "one entry per input"
        );
        for (event, outcome) in events.iter().zip(out) {
            let Event::Frame(peer, frame) = event else {
                continue;
            };
            let reply = outcome.reply.clone().expect("a frame is answered");
            let key = key(peer, frame);
            let same_frame = self
                .m
                .sent
                .iter()
                .any(|(p, f, _)| p.party == peer.party && f == frame);
            match (&reply, self.m.accepted.get(&key)) {
                (_, Some(first)) if same_frame => {
                    assert_eq!(&reply, first, "a duplicate gets its first reply")
                }
                (Body::Refused(r), _) => {
                    assert_ne!(r.reason, Reason::Store, "E_STORE in a committed batch")
                }
                (reply, _) => self.accepted(key, reply),
            }
            self.m.sent.push((peer.clone(), frame.clone(), reply));
        }
    }

    /// A fresh frame was accepted with `reply`.
    fn accepted(&mut self, key: (String, String), reply: &Body) {
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

    /// Runs `events` as one batch with `fault` armed, and checks what a
    /// failed (or, if the fault never fired, a committed) batch must leave:
    /// see the `//!` of this file.
    fn faulty(mut self, fault: Fault, events: Vec<Event>, again: bool, restart: bool) -> Run {
        let before = self.snapshot();
        let failures = self.h.stats().commit_failures;
        let injected = self.faults.injected();
        fault.arm(&self.faults);
        let out = self.h.run(events.clone());
        let failed = self.h.stats().commit_failures > failures;
        let full = fault == Fault::DiskFull;
        let mut late = Vec::new();
        if failed && again && fault.sticky() {
            // Still failing at the next batch: the reload before it fails,
            // and every input of it is answered E_STORE.
            let ims = self.f.ims();
            let frame = self.h.frame(&ims.party, serial_request());
            let out = self.h.run(vec![Event::Frame(ims.clone(), frame.clone())]);
            assert_store_refusal(out[0].reply.as_ref(), &frame, full);
            late.push((ims, frame, out[0].reply.clone().expect("answered")));
        }
        self.faults.clear();
        if !failed {
            self.committed(&events, &out, &before);
            if self.faults.injected() > injected {
                // redb absorbed the fault (a write it may lose): what the
                // engine answered must still be on disk.
                return self.reboot();
            }
            return self;
        }
        for (event, outcome) in events.iter().zip(&out) {
            match event {
                Event::Frame(peer, frame) => {
                    assert_store_refusal(outcome.reply.as_ref(), frame, full);
                    let reply = outcome.reply.clone().expect("answered");
                    self.m.sent.push((peer.clone(), frame.clone(), reply));
                }
                // Nothing was decided: the worker keeps the entry (a
                // dropped verdict once ended the worker and the box).
                Event::Undeliverable(_) => assert!(
                    matches!(outcome.verdict, Some(Verdict::Keep)),
                    "a give-up in a failed batch: {:?}",
                    outcome.verdict
                ),
                Event::Announce(_) => match &outcome.reply {
                    None => {}
                    Some(Body::Refused(r)) if r.reason == Reason::Store => {}
                    other => panic!("an announcement in a failed batch got {other:?}"),
                },
                _ => {}
            }
        }
        self.m.sent.extend(late);
        // The store is back: a restart opens it again, or the engine
        // reloads before its next batch (here an empty one) and tells
        // delivery to read its outbox again from the start.
        if restart {
            self.h = self.h.reboot().expect("reboot after the fault");
        } else {
            self.h.run(Vec::new());
            assert_eq!(self.h.rewinds(), 1, "one rewind after the reload");
        }
        let after = self.snapshot();
        assert!(after.epoch > before.epoch, "a new epoch after the reload");
        let unchanged = Snapshot {
            epoch: before.epoch,
            ..after.clone()
        } == before;
        if fault == Fault::NextSync && !unchanged {
            // The batch landed after all: all of it.
            assert_eq!(
                after.access,
                before.access + logged(&events),
                "part of a batch landed"
            );
            for event in &events {
                if let Event::Frame(peer, frame) = event {
                    let key = key(peer, frame);
                    let Some(reply) = self.h.remembered(frame).expect("remembered") else {
                        continue;
                    };
                    match self.m.accepted.get(&key) {
                        Some(first) => assert_eq!(&reply, first, "remembered twice"),
                        None => self.accepted(key, &reply),
                    }
                }
            }
            self = self.reboot();
        } else {
            assert_eq!(
                Snapshot {
                    epoch: before.epoch,
                    ..after
                },
                before,
                "a failed commit ({fault:?}) kept something"
            );
        }
        // The engine works again, and its next serial is a new one.
        let ims = self.f.ims();
        let frame = self.h.frame(&ims.party, serial_request());
        self.frame(ims, frame);
        let last = self.m.sent.last().map(|(_, _, reply)| reply);
        assert!(
            matches!(last, Some(Body::SerialIssued(_))),
            "no serial after the store came back: {last:?}"
        );
        self
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

/// The duplicate table's key of a frame: sender and message id.
fn key(peer: &Peer, frame: &Frame) -> (String, String) {
    (format!("{:?}", peer.party), frame.header.id.to_string())
}

fn notice(serial: &Serial) -> SerialNotice {
    SerialNotice {
        serial: serial.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let (memory, faults) = (MemoryFile::new(), FaultSwitch::new());
    let f = Fixture::new();
    let mut h = Harness::on_faulty_store(&memory, &faults, f.config()).expect("boot");
    h.set_now(NOON_JST);
    let mut run = Run {
        h,
        f,
        m: Model::default(),
        faults,
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
    let op = b.next() % OPS;
    let (serial, prefix) = run.target(b);
    match op {
        REBOOT => run.reboot(),
        FAULTY_BATCH => {
            let fault = match b.next() % 4 {
                0 => Fault::DiskFull,
                1 => Fault::WriteErrors,
                2 => Fault::WriteAfter(u64::from(b.next() % 32)),
                _ => Fault::NextSync,
            };
            let shape = b.next();
            let (restart, again) = (shape & 1 == 1, shape & 6 == 0);
            let mut events = Vec::new();
            for _ in 0..(shape >> 3) % 4 + 1 {
                // Any input but a re-boot or another faulty batch.
                let op = b.next() % REBOOT;
                let (serial, prefix) = run.target(b);
                events.extend(run.inputs(op, serial, prefix, b));
            }
            run.faulty(fault, events, again, restart)
        }
        op => {
            let mut events = run.inputs(op, serial, prefix, b);
            match events.pop() {
                Some(Event::Frame(peer, frame)) if events.is_empty() => run.frame(peer, frame),
                Some(last) => {
                    events.push(last);
                    run.events(events);
                }
                None => {}
            }
            run
        }
    }
}

impl Run {
    /// Requester-side messages name one of the box's serials; two bytes
    /// decide which, and whether the prefix is the right one.
    fn target(&self, b: &mut Bytes<'_>) -> (Option<Serial>, Prefix) {
        let serial = b.pick(&self.m.issued).cloned();
        let prefix = if b.next() % 8 == 0 {
            self.f.reverse_prefix()
        } else {
            self.f.prefix()
        };
        (serial, prefix)
    }

    /// The inputs of operation `op` (one frame, or inputs that carry none),
    /// built against the model; nothing is run yet.
    fn inputs(
        &mut self,
        op: u8,
        serial: Option<Serial>,
        prefix: Prefix,
        b: &mut Bytes<'_>,
    ) -> Vec<Event> {
        let (ims, core, other) = (self.f.ims(), self.f.core(), self.f.other_box());
        let provider = self.m.provider.clone();
        let any: Vec<Serial> = self.m.issued.iter().chain(&provider).cloned().collect();
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
                let now = self.h.now();
                let mut fields =
                    self.f
                        .permit_fields(&serial, &prefix, now, Duration::from_secs(60));
                match b.next() % 6 {
                    0 => fields.expires_at = now - 1,
                    1 => fields.route.agency = self.f.other.clone(),
                    2 => fields.provider_route.endpoint = "10.9.9.9:1".into(),
                    _ => {}
                }
                let mut permit = self.f.sign(&fields);
                if b.next() % 8 == 0 {
                    permit.sig[0] ^= 1;
                }
                self.m.permits.insert(serial.clone(), permit.clone());
                Some((core.clone(), Fixture::permit_issued(&serial, &permit)))
            }
            (4, Some(serial)) => {
                let permit = permit_of(&self.m, &serial);
                Some((
                    ims.clone(),
                    Body::Query(Fixture::query(&serial, &prefix, &permit)),
                ))
            }
            (5, Some(serial)) => Some((core.clone(), Body::QueryAccepted(notice(&serial)))),
            (6, Some(serial)) => {
                let permit = permit_of(&self.m, &serial);
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
                    self.m.next_provider += 1;
                    let s: Serial = format!("271004-20261201-1-{}", self.m.next_provider)
                        .parse()
                        .expect("serial");
                    self.m.provider.push(s.clone());
                    s
                };
                let prefix = self.f.reverse_prefix();
                let now = self.h.now();
                let permit = self.f.permit(&serial, &prefix, now);
                self.m.permits.insert(serial.clone(), permit.clone());
                Some((
                    core.clone(),
                    Body::Query(Fixture::query(&serial, &prefix, &permit)),
                ))
            }
            (11, _) => b
                .pick(&provider)
                .map(|s| (ims.clone(), Body::QueryAccepted(notice(s)))),
            (12, _) => b.pick(&provider).cloned().map(|s| {
                let permit = permit_of(&self.m, &s);
                let prefix = self.f.reverse_prefix();
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
                Body::Distribution(self.f.distribution(u64::from(b.next() % 4))),
            )),
            (17, _) => {
                // Resend an earlier frame, byte for byte.
                let sent: Vec<(Peer, Frame)> = self
                    .m
                    .sent
                    .iter()
                    .map(|(p, f, _)| (p.clone(), f.clone()))
                    .collect();
                return b
                    .pick(&sent)
                    .cloned()
                    .map(|(peer, frame)| Event::Frame(peer, frame))
                    .into_iter()
                    .collect();
            }
            (18, _) => {
                let secs = u64::from(b.next()) * 2;
                self.h.advance(Duration::from_secs(secs));
                return vec![Event::Tick];
            }
            (19, _) => {
                // The next hops answer some of the outbox, in one batch.
                let outbox = self.h.outbox().expect("outbox");
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
                return events;
            }
            (20, _) => {
                let outbox = self.h.outbox().expect("outbox");
                return b
                    .pick(&outbox)
                    .cloned()
                    .map(|(item, _)| Event::Undeliverable(item))
                    .into_iter()
                    .collect();
            }
            (21, _) => {
                return vec![
                    Event::Announce(StatusEvent::Started),
                    Event::Refused {
                        terminal: SocketAddr::from(([192, 0, 2, 1], 9)),
                        reason: Reason::Identity,
                    },
                ];
            }
            (23, _) => {
                // A frame on the wrong listener, or claiming another sender.
                let body = Body::QueryAccepted(notice(
                    &any.first()
                        .cloned()
                        .unwrap_or_else(|| "131016-20261201-1-1".parse().expect("serial")),
                ));
                let mut frame = self.h.frame(&core.party, body);
                if b.next() % 2 == 0 {
                    frame.header.from = ims.party.clone();
                }
                return vec![Event::Frame(other.clone(), frame)];
            }
            _ => None,
        };
        body.map(|(peer, body)| {
            let frame = self.h.frame(&peer.party, body);
            Event::Frame(peer, frame)
        })
        .into_iter()
        .collect()
    }
}

/// The permit the core issued for `serial`, or one nobody issued.
fn permit_of(m: &Model, serial: &Serial) -> SignedPermit {
    m.permits.get(serial).cloned().unwrap_or(SignedPermit {
        signed: vec![0xa0],
        sig: vec![0; 64],
    })
}
