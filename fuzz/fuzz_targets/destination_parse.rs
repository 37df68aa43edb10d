//! Arbitrary text through `Destination::parse`, the reader of outbox destination keys: never a panic, and a parsed destination's key parses back to it.
#![no_main]

use ifrelay::relay::destination::Destination;
use ifrelay_proto::AgencyCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(destination) = Destination::parse(text) else {
        return;
    };
    let key = destination.key();
    assert_eq!(
        Destination::parse(&key),
        Ok(destination.clone()),
        "{text:?} -> {key:?}"
    );
    let own = AgencyCode::new("131016").expect("valid agency code");
    let party = destination.party(&own);
    if let Destination::PeerIs { agency, .. } = &destination {
        assert_eq!(party.agency.as_ref(), Some(agency));
    }
});
