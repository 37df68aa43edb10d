//! The engine's handlers driven in-process, without sockets: a real
//! engine on a real redb file in a temp dir, one batch per call
//! (`relay::engine::harness`). Covers a full requester-side and
//! provider-side flow (replies, outbox destinations, records, access
//! log), that a refusal changes nothing but the access log, that a
//! duplicate frame gets the same reply and changes nothing, out-of-sequence
//! refusals, step timers closing a process with `E_TIMEOUT`, the serial's
//! JST date, that serials never repeat across a re-boot on the same
//! store, and failed commits on a store that fails on command (a full disk,
//! a write error): every input answered `E_STORE`, nothing of the batch
//! kept, the engine working again once the disk is.

mod steps;

use std::collections::BTreeSet;
use std::time::Duration;

use ifrelay::relay::channel::Verdict;
use ifrelay::relay::destination::Destination;
use ifrelay::relay::engine::harness::{
    Event, FaultSwitch, Fixture, Harness, MemoryFile, Outcome, Snapshot, FAR_FUTURE,
};
use ifrelay_proto::{
    Accepted, Body, Distribution, Frame, KeyCertFields, MasterRow, PermitRequest, PrefixCheck,
    ProcessError, Reason, Serial, SerialNotice, SerialPurpose, SerialRequest,
};
use ifrelay_store::{RecordKind, Side};
use ring::signature::{Ed25519KeyPair, KeyPair};
use steps::{assert_accepted, assert_refused, boot, deliver_all, issue, types, NOON_JST};
use tempfile::TempDir;

/// Boots and distributes the prefix list (delivered to the IMS).
fn ready() -> (TempDir, Harness, Fixture) {
    let (dir, mut h, f) = boot();
    let r = h.send(&f.core(), Body::Distribution(f.distribution(1)));
    assert_accepted(&r);
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Ims, "distribution")]
    );
    (dir, h, f)
}

/// The core sends distribution `d`.
fn core_sends(h: &mut Harness, core: &ifrelay::relay::channel::Peer, d: Distribution) -> Event {
    Event::Frame(core.clone(), h.frame(&core.party, Body::Distribution(d)))
}

/// An Ed25519 key from a fixed seed.
fn ed25519(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("any seed")
}

fn notice(serial: &Serial) -> SerialNotice {
    SerialNotice {
        serial: serial.clone(),
    }
}

/// A serial bound to the fixture's prefix, its permit requested (and the
/// request delivered to the core).
fn requested(h: &mut Harness, f: &Fixture) -> Serial {
    let serial = issue(h, f);
    let prefix = f.prefix();
    let r = h.send(
        &f.ims(),
        Body::PrefixCheck(PrefixCheck {
            serial: serial.clone(),
            prefix: prefix.clone(),
        }),
    );
    assert!(matches!(r, Body::PrefixResult(ref p) if p.ok), "{r:?}");
    let r = h.send(
        &f.ims(),
        Body::PermitRequest(PermitRequest {
            serial: serial.clone(),
            prefix,
        }),
    );
    assert_accepted(&r);
    assert_eq!(
        types(&deliver_all(h)),
        [(Destination::Core, "permit_request")]
    );
    serial
}

fn last_outcome(h: &Harness) -> String {
    let log = h.reader().access_log(0, usize::MAX).expect("access log");
    log.last().expect("an entry").entry.outcome.clone()
}

fn snapshot(h: &Harness) -> Snapshot {
    h.snapshot().expect("snapshot")
}

#[test]
fn a_requester_flow_runs_from_serial_to_close() {
    let (_dir, mut h, mut f) = ready();
    let (ims, core, other) = (f.ims(), f.core(), f.other_box());
    let serial = requested(&mut h, &f);
    let prefix = f.prefix();

    let permit = f.permit(&serial, &prefix, h.now());
    assert_accepted(&h.send(&core, Fixture::permit_issued(&serial, &permit)));
    let out = deliver_all(&mut h);
    assert_eq!(types(&out), [(Destination::Ims, "permit")]);
    assert!(matches!(&out[0].1, Body::Permit(p) if p.permit == permit));

    let query = Fixture::query(&serial, &prefix, &permit);
    assert_accepted(&h.send(&ims, Body::Query(query.clone())));
    let out = deliver_all(&mut h);
    assert_eq!(types(&out), [(Destination::Core, "query")]);
    // The box re-encodes what it relays: same content, its own header.
    assert_eq!(out[0].1, Body::Query(query));

    assert_accepted(&h.send(&core, Body::QueryAccepted(notice(&serial))));
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Ims, "query_accepted")]
    );

    let provision = Fixture::provision(&serial, &prefix, &permit);
    assert_accepted(&h.send(&other, Body::Provision(provision)));
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Ims, "provision")]
    );

    assert_accepted(&h.send(&ims, Body::ProvisionReceived(notice(&serial))));
    let provider_box = Destination::PeerIs {
        agency: f.other.clone(),
        endpoint: f.other_endpoint,
    };
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(provider_box, "provision_received")]
    );

    assert_accepted(&h.send(&ims, Body::QueryComplete(notice(&serial))));
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Core, "query_complete")]
    );
    assert!(
        h.process(&serial).is_some(),
        "open until provision complete"
    );

    assert_accepted(&h.send(&ims, Body::ProvisionComplete(notice(&serial))));
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Core, "provision_complete")]
    );
    assert!(h.process(&serial).is_none(), "closed");

    let s = snapshot(&h);
    assert_eq!(s.stored_processes, 0);
    assert_eq!(s.records, 2);
    let records = h.reader().records(0, 10).expect("records");
    let kinds: Vec<_> = records
        .iter()
        .map(|r| (r.record.kind, r.record.side))
        .collect();
    assert_eq!(
        kinds,
        [
            (RecordKind::Query, Side::Requester),
            (RecordKind::Provision, Side::Requester)
        ]
    );
    for r in &records {
        assert_eq!(r.record.serial, serial);
        assert_eq!(r.record.prefix, prefix);
        assert_eq!(r.record.counterpart.as_ref(), Some(&f.other));
        assert!(r.record.permit_id.is_some() && r.record.code.is_some());
    }
    // One access-log entry per frame received and one per delivery:
    // distribution, serial, prefix check, permit request, permit, query,
    // query accepted, provision, receipt, two completions (11 in), and
    // the 9 frames relayed.
    assert_eq!(s.access, 20);
    let chains = h.reader().verify_chains().expect("verify");
    assert!(chains.is_intact(), "{chains:?}");
}

#[test]
fn a_provider_flow_runs_from_the_cores_query_to_close() {
    let (_dir, mut h, mut f) = ready();
    let (ims, core, other) = (f.ims(), f.core(), f.other_box());
    let serial: Serial = "271004-20261201-1-1".parse().expect("serial");
    let prefix = f.reverse_prefix();
    let permit = f.permit(&serial, &prefix, h.now());

    assert_accepted(&h.send(
        &core,
        Body::Query(Fixture::query(&serial, &prefix, &permit)),
    ));
    assert_eq!(types(&deliver_all(&mut h)), [(Destination::Ims, "query")]);
    assert_accepted(&h.send(&ims, Body::QueryAccepted(notice(&serial))));
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Core, "query_accepted")]
    );
    let provision = Fixture::provision(&serial, &prefix, &permit);
    assert_accepted(&h.send(&ims, Body::Provision(provision)));
    let requester_box = Destination::PeerIs {
        agency: f.other.clone(),
        endpoint: f.other_endpoint,
    };
    assert_eq!(types(&deliver_all(&mut h)), [(requester_box, "provision")]);
    // Only the requester's box may confirm receipt, and only once.
    assert_refused(
        &h.send(&ims, Body::ProvisionComplete(notice(&serial))),
        Reason::OutOfSequence,
    );
    assert_accepted(&h.send(&other, Body::ProvisionReceived(notice(&serial))));
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Ims, "provision_received")]
    );
    assert_accepted(&h.send(&ims, Body::ProvisionComplete(notice(&serial))));
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Core, "provision_complete")]
    );
    assert!(h.process(&serial).is_none());
    let sides: Vec<_> = h
        .reader()
        .records(0, 10)
        .expect("records")
        .iter()
        .map(|r| (r.record.kind, r.record.side))
        .collect();
    assert_eq!(
        sides,
        [
            (RecordKind::Query, Side::Provider),
            (RecordKind::Provision, Side::Provider)
        ]
    );
}

#[test]
fn a_refusal_changes_nothing_but_the_access_log() {
    let (_dir, mut h, mut f) = ready();
    let (ims, core) = (f.ims(), f.core());
    let serial = issue(&mut h, &f);
    let prefix = f.prefix();
    let unknown: Serial = "131016-20261201-1-999".parse().expect("serial");
    let permit = f.permit(&serial, &prefix, h.now());
    let mut forged = permit.clone();
    forged.sig[0] ^= 1;
    let mut liar = h.frame(&core.party, Body::QueryAccepted(notice(&serial)));
    liar.header.from = ims.party.clone();
    assert_accepted(&h.send(&core, Body::Distribution(f.distribution(2))));
    deliver_all(&mut h);
    let now = h.now();

    let cases: Vec<(Event, Reason)> = vec![
        // No binding yet (R-PRM-1).
        (
            Event::Frame(
                ims.clone(),
                h.frame(
                    &ims.party,
                    Body::PermitRequest(PermitRequest {
                        serial: serial.clone(),
                        prefix: prefix.clone(),
                    }),
                ),
            ),
            Reason::NoBinding,
        ),
        (
            Event::Frame(
                ims.clone(),
                h.frame(&ims.party, Body::QueryComplete(notice(&unknown))),
            ),
            Reason::UnknownSerial,
        ),
        // The IMS may not distribute prefix lists.
        (
            Event::Frame(
                ims.clone(),
                h.frame(&ims.party, Body::Distribution(f.distribution(2))),
            ),
            Reason::Role,
        ),
        // A frame that lies about its sender.
        (Event::Frame(core.clone(), liar), Reason::Identity),
        // A permit nobody asked for yet.
        (
            Event::Frame(
                core.clone(),
                h.frame(&core.party, Fixture::permit_issued(&serial, &forged)),
            ),
            Reason::OutOfSequence,
        ),
        // A query before any permit.
        (
            Event::Frame(
                ims.clone(),
                h.frame(
                    &ims.party,
                    Body::Query(Fixture::query(&serial, &prefix, &permit)),
                ),
            ),
            Reason::OutOfSequence,
        ),
        // A distribution with a key that is not an Ed25519 key.
        (
            core_sends(&mut h, &core, {
                let mut fields = f.distribution_fields(3);
                fields.core_keys[0].key = vec![1; 5];
                f.sign_distribution(&fields)
            }),
            Reason::InvalidField,
        ),
        // Signed by a key no pinned root certified (R-DST-1).
        (
            core_sends(&mut h, &core, {
                let stranger = ed25519(42);
                let signer = KeyCertFields {
                    key: stranger.public_key().as_ref().to_vec(),
                    not_before: 0,
                    not_after: FAR_FUTURE,
                }
                .certify(&stranger);
                f.distribution_fields(3).sign(&stranger, signer)
            }),
            Reason::DistUncertified,
        ),
        // A list altered after signing (R-SEC-6).
        (
            core_sends(&mut h, &core, {
                let mut fields = f.distribution_fields(3);
                fields.prefixes.pop();
                Distribution {
                    signed: f.sign_distribution(&fields).signed,
                    ..f.distribution(3)
                }
            }),
            Reason::DistSignature,
        ),
        // A masters table altered after signing.
        (
            core_sends(&mut h, &core, {
                let mut fields = f.distribution_fields(3);
                fields.masters.businesses.push(MasterRow {
                    code: "B999".parse().expect("code"),
                    label: "forged".into(),
                });
                Distribution {
                    signed: f.sign_distribution(&fields).signed,
                    ..f.distribution(3)
                }
            }),
            Reason::DistSignature,
        ),
        // A well-signed older version replayed: version 2 is held.
        (
            core_sends(&mut h, &core, {
                let mut fields = f.distribution_fields(1);
                fields.issued_at = 1;
                f.sign_distribution(&fields)
            }),
            Reason::DistVersion,
        ),
        // Already expired when it arrives.
        (
            core_sends(&mut h, &core, {
                let mut fields = f.distribution_fields(3);
                fields.not_after = now;
                f.sign_distribution(&fields)
            }),
            Reason::DistExpired,
        ),
        // No signature.
        (
            core_sends(&mut h, &core, {
                let mut d = f.distribution(3);
                d.sig.clear();
                d
            }),
            Reason::DistUnsigned,
        ),
    ];
    let refusals = cases.len();
    for (event, reason) in cases {
        h.woken();
        let before = snapshot(&h);
        let out = h.run(vec![event]);
        let reply = out[0].reply.as_ref().expect("a reply");
        assert_refused(reply, reason);
        let after = snapshot(&h);
        assert_eq!(after.access, before.access + 1, "{reason}");
        assert_eq!(after.but_access(&before), before, "{reason} changed state");
        assert_eq!(last_outcome(&h), reason.to_string());
        assert!(h.woken().is_empty(), "{reason} woke delivery");
    }
    assert_eq!(
        h.stats().refused.values().sum::<u64>(),
        u64::try_from(refusals).expect("small"),
        "every refusal counted"
    );
}

#[test]
fn a_duplicate_frame_gets_the_same_reply_and_changes_nothing() {
    let (_dir, mut h, f) = ready();
    let ims = f.ims();
    let request = h.frame(
        &ims.party,
        Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        }),
    );
    let first = h.send_frame(&ims, request.clone());
    assert!(matches!(first, Body::SerialIssued(_)), "{first:?}");
    let before = snapshot(&h);
    let again = h.send_frame(&ims, request.clone());
    assert_eq!(again, first, "same reply, same serial");
    let after = snapshot(&h);
    assert_eq!(after.access, before.access + 1);
    assert_eq!(after.but_access(&before), before);
    assert_eq!(last_outcome(&h), "duplicate");

    // A relayed frame resent: no second outbox entry.
    let serial = match &first {
        Body::SerialIssued(s) => s.serial.clone(),
        _ => unreachable!("checked above"),
    };
    let check = h.frame(
        &ims.party,
        Body::PrefixCheck(PrefixCheck {
            serial: serial.clone(),
            prefix: f.prefix(),
        }),
    );
    h.send_frame(&ims, check);
    let ask = h.frame(
        &ims.party,
        Body::PermitRequest(PermitRequest {
            serial,
            prefix: f.prefix(),
        }),
    );
    assert_accepted(&h.send_frame(&ims, ask.clone()));
    let before = snapshot(&h);
    assert_eq!(before.outbox.len(), 1);
    assert_accepted(&h.send_frame(&ims, ask.clone()));
    assert_eq!(snapshot(&h).but_access(&before), before);

    // The same id for other content is refused, and changes nothing.
    let mut reused = request;
    reused.body = Body::SerialRequest(SerialRequest {
        purpose: SerialPurpose::CodeIssue,
    });
    let before = snapshot(&h);
    assert_refused(&h.send_frame(&ims, reused), Reason::Duplicate);
    assert_eq!(snapshot(&h).but_access(&before), before);
}

#[test]
fn out_of_sequence_messages_are_refused() {
    let (_dir, mut h, mut f) = ready();
    let (ims, core, other) = (f.ims(), f.core(), f.other_box());
    let serial = issue(&mut h, &f);
    assert_refused(
        &h.send(&ims, Body::QueryComplete(notice(&serial))),
        Reason::OutOfSequence,
    );
    assert_refused(
        &h.send(&core, Body::QueryAccepted(notice(&serial))),
        Reason::OutOfSequence,
    );
    let serial = requested(&mut h, &f);
    // Past the prefix check; a second permit request.
    assert_refused(
        &h.send(
            &ims,
            Body::PrefixCheck(PrefixCheck {
                serial: serial.clone(),
                prefix: f.prefix(),
            }),
        ),
        Reason::OutOfSequence,
    );
    assert_refused(
        &h.send(
            &ims,
            Body::PermitRequest(PermitRequest {
                serial: serial.clone(),
                prefix: f.prefix(),
            }),
        ),
        Reason::OutOfSequence,
    );
    // A provision before the query.
    let permit = f.permit(&serial, &f.prefix(), h.now());
    let provision = Fixture::provision(&serial, &f.prefix(), &permit);
    assert_refused(
        &h.send(&other, Body::Provision(provision)),
        Reason::OutOfSequence,
    );
    // Still waiting for its permit.
    assert!(h.process(&serial).is_some());
}

#[test]
fn a_step_timer_closes_the_process_and_tells_ims_and_core() {
    let (_dir, mut h, f) = ready();
    let serial = requested(&mut h, &f);
    h.advance(Fixture::STEPS.permit - Duration::from_secs(1));
    h.tick();
    assert!(h.process(&serial).is_some(), "not yet");
    assert!(h.outbox().expect("outbox").is_empty());
    h.advance(Duration::from_secs(2));
    h.tick();
    assert!(h.process(&serial).is_none(), "closed");
    let out = deliver_all(&mut h);
    let mut told: Vec<Destination> = Vec::new();
    for (dest, body) in out {
        match body {
            Body::ProcessError(ProcessError {
                serial: s,
                reason: Reason::Timeout,
                text,
            }) if s == serial => {
                assert!(text.contains("permit"), "{text}");
                told.push(dest);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    told.sort_by_key(Destination::key);
    assert_eq!(told, [Destination::Core, Destination::Ims]);
    assert_eq!(snapshot(&h).stored_processes, 0);

    // A serial that never reached the core concerns the IMS alone.
    let idle = issue(&mut h, &f);
    h.advance(Fixture::STEPS.idle_process + Duration::from_secs(1));
    h.tick();
    assert!(h.process(&idle).is_none());
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Ims, "process_error")]
    );
}

#[test]
fn serials_never_repeat_across_reboots() {
    let (_dir, mut h, f) = ready();
    let mut seen = BTreeSet::new();
    let mut epochs = Vec::new();
    for boot in 0..3 {
        epochs.push(snapshot(&h).epoch);
        for _ in 0..5 {
            let serial = issue(&mut h, &f);
            assert!(seen.insert(serial.clone()), "{serial} issued twice");
        }
        assert_eq!(snapshot(&h).processes.len(), 5 * (boot + 1));
        h = h.reboot().expect("reboot");
        // Processes survive the restart.
        assert_eq!(snapshot(&h).processes.len(), 5 * (boot + 1));
    }
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
}

#[test]
fn a_serial_carries_the_japan_date_of_its_issue() {
    let (_dir, mut h, f) = ready();
    // 2026-12-01T14:59:59Z is 23:59:59 in Japan; a second later it is
    // 2 December.
    h.set_now(1_796_137_199_000);
    let before = issue(&mut h, &f);
    h.advance(Duration::from_secs(1));
    let after = issue(&mut h, &f);
    assert!(before.as_str().starts_with("131016-20261201-"), "{before}");
    assert!(after.as_str().starts_with("131016-20261202-"), "{after}");
}

/// A box on a store in memory that fails on command, with the prefix list
/// distributed (its entry for the IMS still in the outbox), one serial
/// bound to the fixture's prefix, and a second serial issued.
fn faulty_ready() -> (MemoryFile, FaultSwitch, Harness, Fixture, Serial) {
    let (memory, faults, f) = (MemoryFile::new(), FaultSwitch::new(), Fixture::new());
    let mut h = Harness::on_faulty_store(&memory, &faults, f.config()).expect("boot");
    h.set_now(NOON_JST);
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.distribution(1))));
    let serial = issue(&mut h, &f);
    let r = h.send(
        &f.ims(),
        Body::PrefixCheck(PrefixCheck {
            serial: serial.clone(),
            prefix: f.prefix(),
        }),
    );
    assert!(matches!(r, Body::PrefixResult(ref p) if p.ok), "{r:?}");
    issue(&mut h, &f);
    (memory, faults, h, f, serial)
}

/// A batch with an effect of every kind: a new serial, a permit request
/// (a process step and an outbox entry), the IMS's distribution entry
/// answered, a tick and a refusal noted by a listener.
fn busy_batch(h: &mut Harness, f: &Fixture, serial: &Serial) -> (Vec<Event>, Vec<Frame>) {
    let ims = f.ims();
    let frames = vec![
        h.frame(
            &ims.party,
            Body::SerialRequest(SerialRequest {
                purpose: SerialPurpose::Query,
            }),
        ),
        h.frame(
            &ims.party,
            Body::PermitRequest(PermitRequest {
                serial: serial.clone(),
                prefix: f.prefix(),
            }),
        ),
    ];
    let (item, frame) = h
        .outbox()
        .expect("outbox")
        .into_iter()
        .next()
        .expect("the distribution waits for the IMS");
    let ack = Body::Accepted(Accepted {
        in_reply_to: frame.header.id.clone(),
    });
    let mut events: Vec<Event> = frames
        .iter()
        .map(|fr| Event::Frame(ims.clone(), fr.clone()))
        .collect();
    events.push(Event::Delivered(item, ack));
    events.push(Event::Tick);
    events.push(Event::Refused {
        terminal: "192.0.2.1:9".parse().expect("address"),
        reason: Reason::Identity,
    });
    (events, frames)
}

/// Every frame of a failed batch was answered `E_STORE`, naming the frame.
fn assert_store_refusals(out: &[Outcome], frames: &[Frame], full: bool) {
    let replies: Vec<&Body> = out.iter().filter_map(|o| o.reply.as_ref()).collect();
    assert_eq!(replies.len(), frames.len(), "{out:?}");
    for (reply, frame) in replies.into_iter().zip(frames) {
        match reply {
            Body::Refused(r) => {
                assert_eq!(r.reason, Reason::Store, "{}", r.text);
                assert_eq!(r.in_reply_to.as_ref(), Some(&frame.header.id));
                assert_eq!(r.text.contains("disk is full"), full, "{}", r.text);
            }
            other => panic!("expected E_STORE, got {other:?}"),
        }
    }
}

/// `after` is `before` in a later boot: the same state, a newer epoch.
fn assert_same_but_epoch(after: Snapshot, before: &Snapshot) {
    assert!(
        after.epoch > before.epoch,
        "{} <= {}",
        after.epoch,
        before.epoch
    );
    assert_eq!(
        Snapshot {
            epoch: before.epoch,
            ..after
        },
        *before,
        "something of the failed batch was kept"
    );
}

#[test]
fn a_commit_on_a_full_disk_keeps_nothing_and_the_engine_recovers_in_place() {
    let (_memory, faults, mut h, f, serial) = faulty_ready();
    let before = snapshot(&h);
    let (events, frames) = busy_batch(&mut h, &f, &serial);

    faults.set_disk_full(true);
    let out = h.run(events);
    assert!(faults.injected() > 0, "the full disk was never hit");
    assert_store_refusals(&out, &frames, true);
    assert_eq!(h.stats().commit_failures, 1);
    // Still full at the next batch: the reload fails, and so does it.
    let late = h.frame(
        &f.ims().party,
        Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        }),
    );
    let out = h.run(vec![Event::Frame(f.ims(), late.clone())]);
    assert_store_refusals(&out, std::slice::from_ref(&late), true);
    assert_eq!(h.stats().commit_failures, 2);

    // Space returns: the next batch (here an empty one) reloads the state
    // from the store first and tells delivery to read its outbox again.
    faults.clear();
    h.run(Vec::new());
    assert_eq!(h.rewinds(), 1);
    assert_same_but_epoch(snapshot(&h), &before);

    // The senders send again: handled afresh (refused frames are not
    // remembered), the serial a new one.
    let old: BTreeSet<Serial> = before.processes.keys().cloned().collect();
    for frame in frames.iter().chain([&late]) {
        match h.send_frame(&f.ims(), frame.clone()) {
            Body::SerialIssued(s) => assert!(!old.contains(&s.serial), "{} again", s.serial),
            other => assert_accepted(&other),
        }
    }
    assert_eq!(snapshot(&h).processes.len(), old.len() + 2);
    let h = h.reboot().expect("reboot");
    assert_eq!(snapshot(&h).processes.len(), old.len() + 2);
}

#[test]
fn a_write_error_in_the_commit_keeps_nothing_across_a_restart() {
    let (memory, faults, mut h, f, serial) = faulty_ready();
    let before = snapshot(&h);
    let (events, frames) = busy_batch(&mut h, &f, &serial);

    // The batch's one write, its redo-log entry, fails (redb commits a
    // logged batch without writing: crates/store/src/wal.rs).
    faults.fail_next_write();
    let out = h.run(events);
    assert_eq!(faults.injected(), 1);
    assert_store_refusals(&out, &frames, false);

    // The box restarts on the same store (faults cleared).
    faults.clear();
    drop(h);
    let mut h = Harness::on_faulty_store(&memory, &faults, f.config()).expect("reopen");
    h.set_now(NOON_JST);
    assert_same_but_epoch(snapshot(&h), &before);
    assert!(matches!(
        h.send(
            &f.ims(),
            Body::SerialRequest(SerialRequest {
                purpose: SerialPurpose::Query
            })
        ),
        Body::SerialIssued(s) if !before.processes.contains_key(&s.serial)
    ));
}

/// Regression: a give-up handled in a batch whose commit then failed got no
/// verdict (its sender was dropped), which the delivery worker read as
/// "stopping": the worker ended and the box exited 70.
#[test]
fn a_give_up_in_a_failed_batch_is_answered_keep() {
    let (_memory, faults, mut h, _f, _serial) = faulty_ready();
    let (item, _) = h
        .outbox()
        .expect("outbox")
        .into_iter()
        .next()
        .expect("the distribution waits for the IMS");
    faults.set_disk_full(true);
    let out = h.run(vec![Event::Undeliverable(item)]);
    assert_eq!(h.stats().commit_failures, 1);
    assert_eq!(out[0].verdict, Some(Verdict::Keep));
}
