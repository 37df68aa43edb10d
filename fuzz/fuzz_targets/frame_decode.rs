//! Arbitrary bytes through `frame::check` then `Frame::decode_body`: never a panic, every accepted frame re-encodes to bytes that decode to the same frame, and neither a frame nor a refusal ever carries a My Number.
#![no_main]

use ciborium::Value;
use ifrelay_fuzz::personal_data;
use ifrelay_proto::frame::{self, Check, TooLarge, DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use ifrelay_proto::message::MAX_TEXT;
use ifrelay_proto::{Body, Frame, Reason, SignedPermit};
use libfuzzer_sys::fuzz_target;

/// A second, small limit so that the `TooLarge` path is reached often.
const SMALL_MAX: usize = 1024;

fuzz_target!(|data: &[u8]| {
    for max in [DEFAULT_MAX_FRAME, SMALL_MAX] {
        check_prefix(data, max);
    }
    match frame::check(data, DEFAULT_MAX_FRAME) {
        Ok(Check::Complete { body_len }) => {
            decode(&data[LENGTH_PREFIX..LENGTH_PREFIX + body_len]);
        }
        // A reader would wait for more bytes or close; decode what is there
        // anyway, so that a mutated prefix does not hide the decoder.
        Ok(Check::Incomplete) | Err(_) => decode(data.get(LENGTH_PREFIX..).unwrap_or_default()),
    }
});

/// `check` and `body_len` against their contract, worked out by hand.
fn check_prefix(data: &[u8], max: usize) {
    let outcome = frame::check(data, max);
    let Some(prefix) = data.get(..LENGTH_PREFIX) else {
        assert_eq!(outcome, Ok(Check::Incomplete));
        return;
    };
    let prefix: [u8; LENGTH_PREFIX] = prefix.try_into().expect("four bytes");
    let announced = u32::from_be_bytes(prefix) as usize;
    let want = if announced > max {
        Err(TooLarge { announced, max })
    } else if data.len() < LENGTH_PREFIX + announced {
        Ok(Check::Incomplete)
    } else {
        Ok(Check::Complete {
            body_len: announced,
        })
    };
    assert_eq!(outcome, want);
    assert_eq!(frame::body_len(prefix, max), want.map(|_| announced));
}

fn decode(body: &[u8]) {
    let frame = match Frame::decode_body(body) {
        Ok(frame) => frame,
        Err(e) => {
            // A refusal goes back to the sender and into the access log:
            // it must not carry the personal data it refuses.
            assert!(
                !ifrelay_fuzz::contains_my_number(&e.text),
                "refusal text holds a My Number: {e:?}"
            );
            if let Some(id) = &e.message_id {
                assert!(!ifrelay_fuzz::contains_my_number(id.as_str()));
            }
            assert!(
                e.text.len() <= MAX_TEXT,
                "refusal text of {} bytes",
                e.text.len()
            );
            return;
        }
    };

    // Round trip: the box forwards the re-encoding, so it must say the same.
    let bytes = frame.encode();
    assert_eq!(
        frame::check(&bytes, usize::MAX),
        Ok(Check::Complete {
            body_len: bytes.len() - LENGTH_PREFIX
        })
    );
    let again = Frame::decode_body(&bytes[LENGTH_PREFIX..]).expect("a re-encoded frame decodes");
    assert_eq!(again, frame, "re-encoding changed the frame");
    assert_eq!(bytes, again.encode(), "encoding is not stable");

    // Screen: nothing in what the box would relay holds personal data.
    let tree: Value = ciborium::from_reader(&bytes[LENGTH_PREFIX..]).expect("own encoding is CBOR");
    if let Some(found) = personal_data(&tree) {
        panic!("decoded frame carries personal data: {found:?} in {tree:?}");
    }
    // The permit inside is parsed by the relay too.
    if let Some(permit) = permit_of(&frame.body) {
        check_permit(permit);
    }
}

fn permit_of(body: &Body) -> Option<&SignedPermit> {
    match body {
        Body::Permit(m) => Some(&m.permit),
        Body::Query(m) => Some(&m.permit),
        Body::Provision(m) => Some(&m.permit),
        _ => None,
    }
}

fn check_permit(permit: &SignedPermit) {
    match permit.fields() {
        Ok(fields) => {
            let tree = Value::serialized(&fields).expect("permit fields serialise");
            if let Some(found) = personal_data(&tree) {
                panic!("accepted permit carries personal data: {found:?}");
            }
        }
        Err(e) => {
            assert!(matches!(
                e.reason,
                Reason::PermitInvalid | Reason::MyNumber | Reason::BasicFour
            ));
            assert!(!ifrelay_fuzz::contains_my_number(&e.text));
        }
    }
}
