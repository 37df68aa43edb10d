//! Signed distributions in the engine (issue 8; R-DST-1..3, R-PRM-2,
//! R-SEC-6), driven in-process on a real redb file: a scheduled
//! distribution takes effect at its `not_before` and not before; a
//! rotation of the core's key with a process in flight; expiry closes new
//! work but lets work under way finish; lists survive a restart, and a
//! stored list that no pinned root vouches for is not held. The refusals
//! of badly signed distributions (each with its code, nothing changed) are
//! in `tests/engine.rs`, `a_refusal_changes_nothing_but_the_access_log`.

mod steps;

use std::time::Duration;

use ifrelay::relay::destination::Destination;
use ifrelay::relay::engine::harness::{Fixture, Harness};
use ifrelay_proto::{
    Body, CoreKey, Millis, PermitRequest, Prefix, PrefixCheck, Reason, Serial, SignedPermit,
};
use ring::signature::{Ed25519KeyPair, KeyPair};
use steps::{assert_accepted, assert_refused, boot, deliver_all, issue, types, NOON_JST};

const MINUTE: Millis = 60_000;

/// The prefix check's answer: `Ok(())` or the NG reason.
fn check(h: &mut Harness, f: &Fixture, serial: &Serial, prefix: &Prefix) -> Result<(), Reason> {
    match h.send(
        &f.ims(),
        Body::PrefixCheck(PrefixCheck {
            serial: serial.clone(),
            prefix: prefix.clone(),
        }),
    ) {
        Body::PrefixResult(r) if r.ok => Ok(()),
        Body::PrefixResult(r) => Err(r.reason.expect("an NG names its reason")),
        other => panic!("no prefix result: {other:?}"),
    }
}

/// A serial bound to the fixture's prefix, its permit requested.
fn requested(h: &mut Harness, f: &Fixture) -> Serial {
    let serial = issue(h, f);
    check(h, f, &serial, &f.prefix()).expect("listed");
    assert_accepted(&h.send(
        &f.ims(),
        Body::PermitRequest(PermitRequest {
            serial: serial.clone(),
            prefix: f.prefix(),
        }),
    ));
    assert!(types(&deliver_all(h)).contains(&(Destination::Core, "permit_request")));
    serial
}

/// A permit for `serial` signed with `key` (not necessarily the fixture's).
fn permit_signed_by(
    f: &mut Fixture,
    key: &Ed25519KeyPair,
    serial: &Serial,
    prefix: &Prefix,
    now: Millis,
) -> SignedPermit {
    let fields = f.permit_fields(serial, prefix, now, Duration::from_secs(600));
    let mut permit = SignedPermit::unsigned(&fields);
    permit.sig = key.sign(&permit.signing_input()).as_ref().to_vec();
    permit
}

fn listed_key(key: &Ed25519KeyPair, not_before: Millis, not_after: Millis) -> CoreKey {
    CoreKey {
        key: key.public_key().as_ref().to_vec(),
        not_before,
        not_after,
    }
}

#[test]
fn a_scheduled_distribution_takes_effect_at_its_not_before() {
    let (_dir, mut h, f) = boot();
    // Version 1 lists only this box's own prefix; version 2 also lists a
    // business it did not, from one minute on.
    let mut v1 = f.distribution_fields(1);
    let extra = {
        let mut p = f.prefix();
        p.business = "B011".parse().expect("code");
        p
    };
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.sign_distribution(&v1))));
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Ims, "distribution")]
    );
    let serial = issue(&mut h, &f);
    assert_eq!(
        check(&mut h, &f, &serial, &extra),
        Err(Reason::PrefixNotListed)
    );

    v1.version = 2;
    v1.not_before = Some(h.now() + MINUTE);
    v1.prefixes
        .extend(extra.items.iter().map(|item| ifrelay_proto::PrefixEntry {
            requester: extra.requester.clone(),
            provider: extra.provider.clone(),
            business: extra.business.clone(),
            info_name: extra.info_name.clone(),
            item: item.clone(),
        }));
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.sign_distribution(&v1))));
    // Relayed to the IMS at once, so every party holds it before the switch.
    assert_eq!(
        types(&deliver_all(&mut h)),
        [(Destination::Ims, "distribution")]
    );
    assert_eq!(
        check(&mut h, &f, &serial, &extra),
        Err(Reason::PrefixNotListed)
    );

    // Held across a restart, still waiting for its time.
    let mut h = h.reboot().expect("reboot");
    let serial = issue(&mut h, &f);
    assert_eq!(
        check(&mut h, &f, &serial, &extra),
        Err(Reason::PrefixNotListed)
    );

    h.advance(Duration::from_secs(60));
    assert_eq!(check(&mut h, &f, &serial, &extra), Ok(()));
    // The same scheduled copy sent again is acknowledged, not relayed.
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.sign_distribution(&v1))));
    assert!(types(&deliver_all(&mut h)).is_empty());
}

#[test]
fn an_emergency_distribution_overrides_a_scheduled_older_one() {
    let (_dir, mut h, f) = boot();
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.distribution(1))));
    let mut scheduled = f.distribution_fields(2);
    scheduled.not_before = Some(h.now() + MINUTE);
    scheduled.prefixes.clear();
    assert_accepted(&h.send(
        &f.core(),
        Body::Distribution(f.sign_distribution(&scheduled)),
    ));
    // Version 3, no not_before: in force now; version 2 never takes effect.
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.distribution(3))));
    h.advance(Duration::from_secs(120));
    let serial = issue(&mut h, &f);
    assert_eq!(check(&mut h, &f, &serial, &f.prefix()), Ok(()));
    // And the scheduled version, sent again, is now an older one.
    assert_refused(
        &h.send(
            &f.core(),
            Body::Distribution(f.sign_distribution(&scheduled)),
        ),
        Reason::DistVersion,
    );
}

#[test]
fn permits_under_both_keys_verify_during_a_rotation_and_a_dropped_key_is_refused() {
    let (_dir, mut h, mut f) = boot();
    let now = h.now();
    let current = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("the fixture's key");
    let next = Ed25519KeyPair::from_seed_unchecked(&[21; 32]).expect("seed");
    let never = Ed25519KeyPair::from_seed_unchecked(&[22; 32]).expect("seed");
    assert_eq!(f.core_key(), current.public_key().as_ref());

    assert_accepted(&h.send(&f.core(), Body::Distribution(f.distribution(1))));
    // A process in flight under the current key.
    let in_flight = requested(&mut h, &f);

    // The rotation starts: both keys listed.
    let mut both = f.distribution_fields(2);
    both.core_keys = vec![
        listed_key(&current, 0, now + 10 * MINUTE),
        listed_key(&next, now, now + 1_000 * MINUTE),
    ];
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.sign_distribution(&both))));
    let prefix = f.prefix();
    let old = permit_signed_by(&mut f, &current, &in_flight, &prefix, now);
    assert_accepted(&h.send(&f.core(), Fixture::permit_issued(&in_flight, &old)));
    let second = requested(&mut h, &f);
    let new = permit_signed_by(&mut f, &next, &second, &prefix, now);
    assert_accepted(&h.send(&f.core(), Fixture::permit_issued(&second, &new)));
    // A key that was never distributed.
    let third = requested(&mut h, &f);
    let forged = permit_signed_by(&mut f, &never, &third, &prefix, now);
    assert_refused(
        &h.send(&f.core(), Fixture::permit_issued(&third, &forged)),
        Reason::PermitInvalid,
    );

    // The rotation ends: only the next key is listed.
    let mut only_next = f.distribution_fields(3);
    only_next.core_keys = vec![listed_key(&next, now, now + 1_000 * MINUTE)];
    assert_accepted(&h.send(
        &f.core(),
        Body::Distribution(f.sign_distribution(&only_next)),
    ));
    // (A refused permit closes its process: each check gets its own.)
    let fourth = requested(&mut h, &f);
    let old = permit_signed_by(&mut f, &current, &fourth, &prefix, now);
    assert_refused(
        &h.send(&f.core(), Fixture::permit_issued(&fourth, &old)),
        Reason::PermitInvalid,
    );
    let fifth = requested(&mut h, &f);
    let new = permit_signed_by(&mut f, &next, &fifth, &prefix, now);
    assert_accepted(&h.send(&f.core(), Fixture::permit_issued(&fifth, &new)));
}

#[test]
fn a_key_past_its_window_no_longer_verifies() {
    let (_dir, mut h, mut f) = boot();
    let now = h.now();
    let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("the fixture's key");
    let mut fields = f.distribution_fields(1);
    fields.core_keys = vec![listed_key(&key, 0, now + MINUTE)];
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.sign_distribution(&fields))));
    let serial = requested(&mut h, &f);
    h.advance(Duration::from_secs(61));
    let prefix = f.prefix();
    let permit = permit_signed_by(&mut f, &key, &serial, &prefix, h.now());
    assert_refused(
        &h.send(&f.core(), Fixture::permit_issued(&serial, &permit)),
        Reason::PermitInvalid,
    );
}

#[test]
fn expiry_closes_new_work_but_lets_work_under_way_finish() {
    let (_dir, mut h, mut f) = boot();
    let mut fields = f.distribution_fields(1);
    // Ten seconds: well inside the fixture's 30-second permit step.
    fields.not_after = h.now() + 10_000;
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.sign_distribution(&fields))));
    let under_way = requested(&mut h, &f);
    let bound = issue(&mut h, &f);
    check(&mut h, &f, &bound, &f.prefix()).expect("listed before expiry");

    h.advance(Duration::from_secs(11));
    h.tick();
    // New work: a prefix check answers NG with the expiry's own code.
    let fresh = issue(&mut h, &f);
    assert_eq!(
        check(&mut h, &f, &fresh, &f.prefix()),
        Err(Reason::PrefixListExpired)
    );
    // A new process on the provider side is refused the same way.
    let serial: Serial = "271004-20261201-1-1".parse().expect("serial");
    let reverse = f.reverse_prefix();
    let permit = f.permit(&serial, &reverse, h.now());
    assert_refused(
        &h.send(
            &f.core(),
            Body::Query(Fixture::query(&serial, &reverse, &permit)),
        ),
        Reason::PrefixListExpired,
    );
    // Work under way: the permit for the process that asked before the
    // expiry is relayed, and a serial bound before it may ask for one.
    let prefix = f.prefix();
    let permit = f.permit(&under_way, &prefix, h.now());
    assert_accepted(&h.send(&f.core(), Fixture::permit_issued(&under_way, &permit)));
    assert_accepted(&h.send(
        &f.ims(),
        Body::PermitRequest(PermitRequest {
            serial: bound,
            prefix: f.prefix(),
        }),
    ));

    // A newer distribution opens new work again.
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.distribution(2))));
    assert_eq!(check(&mut h, &f, &fresh, &f.prefix()), Ok(()));
}

#[test]
fn lists_survive_a_restart_and_a_list_no_pinned_root_vouches_for_is_not_held() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ifrelay.redb");
    let f = Fixture::new();
    let mut h = Harness::open(&path, f.config()).expect("boot");
    h.set_now(NOON_JST);
    assert_accepted(&h.send(&f.core(), Body::Distribution(f.distribution(1))));
    let mut h = h.reboot().expect("reboot");
    let serial = issue(&mut h, &f);
    assert_eq!(check(&mut h, &f, &serial, &f.prefix()), Ok(()));

    // The same store under another pinned root: what is stored no longer
    // verifies, so it is not trusted (and the box waits for the core).
    let mut cfg = f.config();
    cfg.roots = vec![ifrelay_proto::RootKey([3; 32])];
    let mut h = h.reboot_with(cfg).expect("boot");
    let serial = issue(&mut h, &f);
    assert_eq!(
        check(&mut h, &f, &serial, &f.prefix()),
        Err(Reason::NoPrefixList)
    );
}
