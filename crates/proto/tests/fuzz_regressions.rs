//! Regression tests from fuzzing (`fuzz/`, `docs/fuzzing.md`): one test per
//! finding and per nasty input tried, each asserting the typed refusal (the
//! exact reason code) rather than a panic, and the seed corpora of the fuzz
//! targets, which must keep decoding as the protocol evolves.
//!
//! Inputs are inlined as bytes, or built here when they are too large to
//! inline (a map of 100 000 entries). A crash found by a fuzz target becomes
//! a test here named after it; see `docs/fuzzing.md`.

use std::path::{Path, PathBuf};

use ciborium::Value;
use ifrelay_proto::frame::{self, Check, TooLarge, DEFAULT_MAX_FRAME, LENGTH_PREFIX};
use ifrelay_proto::screen;
use ifrelay_proto::*;

// ------------------------------------------------------------- helpers

/// A distribution signed under a root from a fixed seed, so the seed
/// corpus is the same on every run.
fn signed_distribution(masters: Masters) -> Distribution {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let seeded = |b: u8| Ed25519KeyPair::from_seed_unchecked(&[b; 32]).expect("any seed");
    let (root, online) = (seeded(8), seeded(9));
    let signer = KeyCertFields {
        key: online.public_key().as_ref().to_vec(),
        not_before: 0,
        not_after: 4_102_444_800_000,
    }
    .certify(&root);
    DistributionFields {
        version: 3,
        issued_at: 1_700_000_000_000,
        not_before: None,
        not_after: 4_102_444_800_000,
        prefixes: vec![PrefixEntry {
            requester: code("131016"),
            provider: code("271004"),
            business: code("B010"),
            info_name: code("N020"),
            item: code("I001"),
        }],
        masters,
        core_keys: vec![CoreKey {
            key: vec![7; 32],
            not_before: 0,
            not_after: 4_102_444_800_000,
        }],
    }
    .sign(&online, signer)
}

fn code<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("valid code")
}

fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("writing into a Vec");
    out
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// The header of a frame from the agency's IMS, as map entries.
fn header(type_name: &str) -> Vec<(Value, Value)> {
    vec![
        (text("v"), Value::Integer(1.into())),
        (text("id"), text("m-9")),
        (text("type"), text(type_name)),
        (text("sent_at"), Value::Integer(1_700_000_000_000i64.into())),
        (
            text("from"),
            Value::Map(vec![
                (text("role"), text("ims")),
                (text("agency"), text("131016")),
            ]),
        ),
    ]
}

/// A whole `serial_request` body with `extra` entries appended.
fn serial_request_with(extra: Vec<(Value, Value)>) -> Vec<u8> {
    let mut entries = header("serial_request");
    entries.push((text("purpose"), text("query")));
    entries.extend(extra);
    cbor(&Value::Map(entries))
}

fn refused(bytes: &[u8]) -> DecodeError {
    Frame::decode_body(bytes).expect_err("the frame must be refused")
}

fn reason(bytes: &[u8]) -> Reason {
    refused(bytes).reason
}

fn prefix() -> Prefix {
    let mut items = heapless::Vec::new();
    items.push(code("I001")).expect("capacity");
    items.push(code("I002")).expect("capacity");
    Prefix {
        requester: code("131016"),
        business: code("B010"),
        provider: code("271004"),
        info_name: code("N020"),
        items,
    }
}

fn permit_fields() -> PermitFields {
    PermitFields {
        permit_id: code("P-1"),
        issuer: Party::core(),
        serial: code("131016-20261122-1795300000-1"),
        prefix: prefix(),
        route: Route {
            agency: code("131016"),
            endpoint: "127.0.0.1:7443".into(),
        },
        provider_route: Route {
            agency: code("271004"),
            endpoint: "127.0.0.2:7443".into(),
        },
        issued_at: 1_700_000_000_000,
        expires_at: 1_700_000_600_000,
    }
}

/// A permit with a dummy signature: decoding never checks it, and no key
/// of any kind is written into the corpus.
fn permit() -> SignedPermit {
    let mut p = SignedPermit::unsigned(&permit_fields());
    p.sig = vec![0; 64];
    p
}

/// A valid frame of many types: the seeds of the `frame_decode` target.
fn seed_frames() -> Vec<(&'static str, Frame)> {
    let serial: Serial = code("131016-20261122-1795300000-1");
    let id = |s: &str| MessageId::new(s).expect("valid id");
    let ims = Party::ims(code("131016"));
    let frame = |body| Frame::new(id("m-1"), ims.clone(), 1_700_000_000_000, body);
    let mut masters = Masters::default();
    masters.agencies.push(MasterRow {
        code: code("131016"),
        label: "千代田区".into(),
    });
    masters.items.push(ItemRow {
        info_name: code("N020"),
        item: code("I001"),
        label: "課税額".into(),
        business: code("B010"),
    });
    vec![
        (
            "serial_request",
            frame(Body::SerialRequest(SerialRequest {
                purpose: SerialPurpose::Query,
            })),
        ),
        (
            "serial_issued",
            frame(Body::SerialIssued(SerialIssued {
                in_reply_to: id("m-0"),
                serial: serial.clone(),
            })),
        ),
        (
            "prefix_check",
            frame(Body::PrefixCheck(PrefixCheck {
                serial: serial.clone(),
                prefix: prefix(),
            })),
        ),
        (
            "prefix_result",
            frame(Body::PrefixResult(PrefixResult {
                in_reply_to: id("m-0"),
                serial: serial.clone(),
                ok: false,
                reason: Some(Reason::PrefixNotListed),
            })),
        ),
        (
            "permit",
            frame(Body::Permit(PermitIssued {
                serial: serial.clone(),
                permit: permit(),
            })),
        ),
        (
            "query",
            frame(Body::Query(Query {
                serial: serial.clone(),
                prefix: prefix(),
                permit: permit(),
                public_key: vec![9; 32],
                code: code("ABCDEFGH"),
            })),
        ),
        (
            "provision",
            frame(Body::Provision(Provision {
                serial: serial.clone(),
                prefix: prefix(),
                permit: permit(),
                body: b"opaque ciphertext".to_vec(),
            })),
        ),
        (
            "query_complete",
            frame(Body::QueryComplete(SerialNotice {
                serial: serial.clone(),
            })),
        ),
        (
            "distribution",
            frame(Body::Distribution(signed_distribution(masters))),
        ),
        (
            "box_status",
            frame(Body::BoxStatus(BoxStatus {
                event: StatusEvent::Started,
            })),
        ),
        (
            "process_error",
            frame(Body::ProcessError(ProcessError {
                serial: serial.clone(),
                reason: Reason::Timeout,
                text: "no answer".into(),
            })),
        ),
        (
            "accepted",
            frame(Body::Accepted(Accepted {
                in_reply_to: id("m-0"),
            })),
        ),
        (
            "refused",
            frame(Body::Refused(Refused {
                in_reply_to: Some(id("m-0")),
                reason: Reason::Busy,
                text: "busy".into(),
            })),
        ),
    ]
}

/// Every binary seed of every fuzz target, as (target, file name, bytes).
/// Text seeds (configuration, hours, destinations) are committed as is.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, f) in seed_frames() {
        out.push(("frame_decode", format!("seed-{name}.bin"), f.encode()));
    }
    out.push((
        "permit_fields",
        "seed-permit.bin".into(),
        permit().signed.clone(),
    ));
    let frame = seed_frames()
        .into_iter()
        .find(|(n, _)| *n == "query")
        .map(|(_, f)| f.encode())
        .expect("a query seed");
    for key in ["core", "ims", "is/271004@127.0.0.2:7443"] {
        let mut bytes = vec![u8::try_from(key.len()).expect("short key")];
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(&frame);
        let file = format!("seed-{}.bin", key.split('/').next().unwrap_or(key));
        out.push(("outbox_from_stored", file, bytes));
    }
    let tree = Value::Map(vec![
        (text("serial"), text("131016-20261122-1795300000-1")),
        (
            text("codes"),
            Value::Array(vec![text("ref 12345678901 x"), text("１２３４")]),
        ),
        (text("n"), Value::Integer(12_345_678_901i64.into())),
        (text("label"), text("Name")),
    ]);
    out.push(("screen", "seed-tree.bin".into(), cbor(&tree)));
    out
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

// ------------------------------------------------------------- seeds

/// The committed binary seeds are exactly what [`seeds`] builds, and every
/// frame seed decodes. After a protocol change, rewrite them with
/// `IFRELAY_WRITE_SEEDS=1 cargo test -p ifrelay-proto --test fuzz_regressions seed`.
#[test]
fn seed_corpus_is_current_and_decodes() {
    let write = std::env::var_os("IFRELAY_WRITE_SEEDS").is_some();
    for (target, file, bytes) in seeds() {
        let path = corpus_dir(target).join(&file);
        if write {
            std::fs::create_dir_all(corpus_dir(target)).expect("corpus folder");
            std::fs::write(&path, &bytes).expect("seed written");
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; rewrite the seeds with IFRELAY_WRITE_SEEDS=1",
                path.display()
            )
        });
        assert_eq!(
            committed,
            bytes,
            "{} is stale; rewrite the seeds with IFRELAY_WRITE_SEEDS=1",
            path.display()
        );
    }
    for (name, f) in seed_frames() {
        let bytes = f.encode();
        let back = Frame::decode_body(&bytes[LENGTH_PREFIX..]).expect("a seed decodes");
        assert_eq!(back, f, "seed {name}");
    }
    assert_eq!(permit().fields(), Ok(permit_fields()));
}

// ------------------------------------------------------------- length prefix

#[test]
fn two_gib_length_prefix_is_too_large_before_any_body_byte() {
    let announced = 0x8000_0000usize;
    assert_eq!(
        frame::check(&[0x80, 0, 0, 0], DEFAULT_MAX_FRAME),
        Err(TooLarge {
            announced,
            max: DEFAULT_MAX_FRAME
        })
    );
    assert_eq!(
        frame::body_len([0x80, 0, 0, 0], DEFAULT_MAX_FRAME),
        Err(TooLarge {
            announced,
            max: DEFAULT_MAX_FRAME
        })
    );
    // The largest prefix, even with the largest limit the config allows.
    assert_eq!(
        frame::check(&[0xff; 4], 64 * 1024 * 1024),
        Err(TooLarge {
            announced: u32::MAX as usize,
            max: 64 * 1024 * 1024
        })
    );
}

#[test]
fn prefix_at_the_limit_waits_and_one_over_is_refused() {
    let max = 1024;
    let at = (max as u32).to_be_bytes();
    assert_eq!(frame::check(&at, max), Ok(Check::Incomplete));
    let mut whole = at.to_vec();
    whole.resize(LENGTH_PREFIX + max, 0);
    assert_eq!(
        frame::check(&whole, max),
        Ok(Check::Complete { body_len: max })
    );
    assert_eq!(
        frame::check(&(max as u32 + 1).to_be_bytes(), max),
        Err(TooLarge {
            announced: max + 1,
            max
        })
    );
    // Fewer than four bytes: never an error, whatever they are.
    assert_eq!(frame::check(&[0xff, 0xff, 0xff], 0), Ok(Check::Incomplete));
    assert_eq!(frame::check(&[], 0), Ok(Check::Incomplete));
}

// ------------------------------------------------------------- CBOR shape

#[test]
fn empty_and_non_map_bodies_are_malformed() {
    assert_eq!(reason(b""), Reason::Malformed);
    assert_eq!(reason(&cbor(&Value::Array(vec![]))), Reason::Malformed);
    assert_eq!(reason(&cbor(&text("serial_request"))), Reason::Malformed);
    // A self-described map (tag 55799) is not a bare map either.
    let tagged = cbor(&Value::Tag(
        55799,
        Box::new(Value::Map(header("serial_request"))),
    ));
    assert_eq!(reason(&tagged), Reason::Malformed);
}

#[test]
fn deep_nesting_is_malformed_not_a_stack_overflow() {
    // 100 000 nested arrays inside an otherwise valid frame: refused at the
    // decoder's recursion limit, long before the stack is at risk.
    let depth = 100_000;
    let mut nested = vec![0x81u8; depth];
    nested.push(0x00);
    let mut body = serial_request_with(vec![]);
    // Rewrite the map header to hold one more entry, then append it.
    assert_eq!(body[0], 0xa6, "six entries");
    body[0] = 0xa7;
    body.extend_from_slice(&cbor(&text("deep")));
    body.extend_from_slice(&nested);
    let err = refused(&body);
    assert_eq!(err.reason, Reason::Malformed);
    assert!(err.text.contains("RecursionLimitExceeded"), "{}", err.text);
    assert_eq!(err.message_id, None, "the tree was never built");

    // Nested maps and tags likewise.
    let mut maps = Vec::new();
    for _ in 0..depth {
        maps.extend_from_slice(&[0xa1, 0x61, b'k']);
    }
    maps.push(0x00);
    assert_eq!(reason(&maps), Reason::Malformed);
    let mut tags = vec![0xc6u8; depth];
    tags.push(0x00);
    assert_eq!(reason(&tags), Reason::Malformed);
}

#[test]
fn nesting_just_under_the_limit_is_decoded_and_dropped() {
    // 20 levels under an unknown key: within the limit, so the frame is
    // read, and the key is dropped from what would be relayed.
    let mut deep = Value::Integer(0.into());
    for _ in 0..20 {
        deep = Value::Array(vec![deep]);
    }
    let f =
        Frame::decode_body(&serial_request_with(vec![(text("x_deep"), deep)])).expect("decodes");
    assert_eq!(f.body.type_name(), "serial_request");
    assert!(!f.encode_body().windows(6).any(|w| w == b"x_deep"));
}

#[test]
fn huge_declared_lengths_are_malformed_without_allocating() {
    // Each item announces 2^64-1 units and then ends: a decoder that
    // reserved the announced size first would abort, not refuse.
    for (what, head) in [
        ("text", 0x7bu8),
        ("bytes", 0x5b),
        ("array", 0x9b),
        ("map", 0xbb),
    ] {
        let mut body = vec![head];
        body.extend_from_slice(&u64::MAX.to_be_bytes());
        body.extend_from_slice(b"abc");
        assert_eq!(reason(&body), Reason::Malformed, "{what}");
    }
    // The same inside a frame whose header is complete.
    let mut body = serial_request_with(vec![]);
    body[0] = 0xa7;
    body.extend_from_slice(&cbor(&text("x")));
    body.push(0x5b);
    body.extend_from_slice(&(u64::MAX / 2).to_be_bytes());
    assert_eq!(reason(&body), Reason::Malformed);
}

#[test]
fn non_utf8_text_is_malformed() {
    // "type": a text string of 2 bytes that are not UTF-8.
    let mut body = vec![0xa1];
    body.extend_from_slice(&cbor(&text("type")));
    body.extend_from_slice(&[0x62, 0xc3, 0x28]);
    assert_eq!(reason(&body), Reason::Malformed);
    // A lone surrogate encoded as UTF-8 (CESU) in an id.
    let mut body = vec![0xa1];
    body.extend_from_slice(&cbor(&text("id")));
    body.extend_from_slice(&[0x63, 0xed, 0xa0, 0x80]);
    assert_eq!(reason(&body), Reason::Malformed);
}

#[test]
fn indefinite_length_items() {
    // A whole frame written with indefinite-length map and strings is the
    // same frame: CBOR allows it and the box re-encodes definite.
    let definite = serial_request_with(vec![]);
    let Value::Map(entries) = ciborium::from_reader(definite.as_slice()).expect("cbor") else {
        panic!("map");
    };
    let mut indefinite = vec![0xbf];
    for (k, v) in &entries {
        indefinite.extend_from_slice(&cbor(k));
        indefinite.extend_from_slice(&cbor(v));
    }
    indefinite.push(0xff);
    let a = Frame::decode_body(&definite).expect("definite");
    let b = Frame::decode_body(&indefinite).expect("indefinite");
    assert_eq!(a, b);

    // Unterminated indefinite map: the body ends before the break.
    assert_eq!(
        reason(&indefinite[..indefinite.len() - 1]),
        Reason::Malformed
    );
    // An indefinite text string whose chunk is a byte string.
    assert_eq!(reason(&[0x7f, 0x41, b'a', 0xff]), Reason::Malformed);
    // An indefinite text string with an indefinite chunk inside.
    assert_eq!(reason(&[0x7f, 0x7f, 0xff, 0xff]), Reason::Malformed);
    // A break with nothing to end.
    assert_eq!(reason(&[0xff]), Reason::Malformed);
    // An indefinite array of a million breaks-that-are-not: never ends.
    let mut long = vec![0x9f];
    long.extend(std::iter::repeat_n(0x80, 1_000_000));
    assert_eq!(reason(&long), Reason::Malformed);
}

#[test]
fn duplicate_keys() {
    // A body field twice: the typed decoder refuses it.
    let body = serial_request_with(vec![(text("purpose"), text("code_issue"))]);
    let err = refused(&body);
    assert_eq!(err.reason, Reason::InvalidField);
    assert!(err.text.contains("duplicate field"), "{}", err.text);
    assert_eq!(err.message_id, MessageId::new("m-9").ok());

    // A header key twice: the first is the one read, and the re-encoded
    // frame (what the box relays) carries it once, so no later hop can
    // read the other one.
    let body = serial_request_with(vec![(text("id"), text("m-other"))]);
    let f = Frame::decode_body(&body).expect("decodes");
    assert_eq!(f.header.id.as_str(), "m-9");
    let Value::Map(entries) =
        ciborium::from_reader(f.encode_body().as_slice()).expect("own encoding")
    else {
        panic!("map");
    };
    let ids = entries
        .iter()
        .filter(|(k, _)| matches!(k, Value::Text(t) if t == "id"))
        .count();
    assert_eq!(ids, 1);
}

#[test]
fn map_of_100k_entries_within_the_frame_limit() {
    // 100 000 unknown text keys after a valid header: well under 4 MiB,
    // decoded once, and none of them is relayed.
    let extra: Vec<(Value, Value)> = (0..100_000u32)
        .map(|i| (text(&format!("k{i}")), Value::Null))
        .collect();
    let body = serial_request_with(extra);
    assert!(body.len() < DEFAULT_MAX_FRAME, "{} bytes", body.len());
    let f = Frame::decode_body(&body).expect("decodes");
    assert!(f.encode_body().len() < 128);

    // The same with integer keys: a body key must be text, so the typed
    // decoder refuses the first one.
    let extra: Vec<(Value, Value)> = (0..100_000u32)
        .map(|i| (Value::Integer(i.into()), Value::Null))
        .collect();
    let err = refused(&serial_request_with(extra));
    assert_eq!(err.reason, Reason::InvalidField);
    assert_eq!(err.message_id, MessageId::new("m-9").ok());

    // The same map without a header: refused as malformed.
    let extra: Vec<(Value, Value)> = (0..100_000u32)
        .map(|i| (Value::Integer(i.into()), Value::Null))
        .collect();
    assert_eq!(reason(&cbor(&Value::Map(extra))), Reason::Malformed);

    // A map announcing 100 000 entries but holding one: malformed.
    let mut short = vec![0xba];
    short.extend_from_slice(&100_000u32.to_be_bytes());
    short.extend_from_slice(&[0x00, 0x00]);
    assert_eq!(reason(&short), Reason::Malformed);
}

// ------------------------------------------------------------- header values

#[test]
fn out_of_range_header_integers() {
    let with = |key: &str, value: Value| {
        let mut entries = header("serial_request");
        for (k, v) in &mut entries {
            if *k == text(key) {
                *v = value.clone();
            }
        }
        entries.push((text("purpose"), text("query")));
        cbor(&Value::Map(entries))
    };
    assert_eq!(
        reason(&with("sent_at", Value::Integer(u64::MAX.into()))),
        Reason::Malformed
    );
    assert_eq!(
        reason(&with("v", Value::Integer(u64::MAX.into()))),
        Reason::UnsupportedVersion
    );
    assert_eq!(
        reason(&with("v", Value::Integer((-1i64).into()))),
        Reason::UnsupportedVersion
    );
    assert_eq!(reason(&with("v", Value::Float(1.0))), Reason::Malformed);
    assert_eq!(reason(&with("v", Value::Null)), Reason::Malformed);
    // The most negative CBOR integer, -2^64.
    let mut body = with("sent_at", Value::Integer(0.into()));
    let at = body
        .windows(9)
        .position(|w| w == b"\x67sent_at\x00")
        .expect("sent_at");
    body.splice(
        at + 8..at + 9,
        [0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    );
    assert_eq!(reason(&body), Reason::Malformed);
}

#[test]
fn a_very_long_unknown_type_is_cut_in_the_refusal() {
    let name = "t".repeat(100_000);
    let err = refused(&cbor(&Value::Map(header(&name))));
    assert_eq!(err.reason, Reason::UnknownType);
    assert!(err.text.len() <= message::MAX_TEXT);
}

// ------------------------------------------------------------- permits

#[test]
fn permit_bytes_over_the_limit_are_refused_unread() {
    let p = SignedPermit {
        signed: vec![0xbb; MAX_PERMIT_BYTES + 1],
        sig: vec![],
    };
    assert_eq!(
        p.fields().expect_err("refused").reason,
        Reason::PermitInvalid
    );
}

#[test]
fn permit_nasty_inputs_are_permit_invalid() {
    let nasty: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        vec![0x9f; 1000],
        [vec![0x7b], u64::MAX.to_be_bytes().to_vec()].concat(),
        vec![0xbf, 0xff],
        // Valid CBOR, wrong shape.
        cbor(&Value::Array(vec![])),
    ];
    for signed in nasty {
        let p = SignedPermit {
            signed: signed.clone(),
            sig: vec![],
        };
        assert_eq!(
            p.fields().expect_err("refused").reason,
            Reason::PermitInvalid,
            "{signed:02x?}"
        );
    }
}

#[test]
fn permit_with_a_my_number_is_refused_as_such() {
    let Value::Map(mut entries) = Value::serialized(&permit_fields()).expect("serialises") else {
        panic!("map");
    };
    entries.push((text("note"), text("123456789018")));
    let p = SignedPermit {
        signed: cbor(&Value::Map(entries)),
        sig: vec![],
    };
    let err = p.fields().expect_err("refused");
    assert_eq!(err.reason, Reason::MyNumber);
    assert!(!screen::contains_my_number(&err.text), "{}", err.text);
}

// ------------------------------------------------------------- findings

/// No refusal text may carry a My Number: it is sent back to the sender
/// and written to the journal and the access log (§2.2 ③).
fn assert_clean_refusal(err: &DecodeError) {
    assert!(
        !screen::contains_my_number(&err.text),
        "refusal text holds a My Number: {:?}",
        err.text
    );
    assert!(
        err.text.len() <= message::MAX_TEXT,
        "{} bytes",
        err.text.len()
    );
    if let Some(id) = &err.message_id {
        assert!(!screen::contains_my_number(id.as_str()));
    }
}

/// Finding 1 (frame_decode, minimised): `from` is read before the screen
/// runs, and serde's message quoted the text given for it, so a My Number
/// sent as `from` came back in the refusal and went into the log.
#[test]
fn fuzz_from_header_holding_a_my_number_is_not_echoed() {
    #[rustfmt::skip]
    let body: &[u8] = &[
        0xa9,
        0x61, b'v', 0x01,
        0x62, b'i', b'd', 0x63, b'm', b'-', b'1',
        0x64, b't', b'y', b'p', b'e',
        0x6c, b'p', b'r', b'e', b'f', b'i', b'x', b'_', b'c', b'h', b'e', b'c', b'k',
        0x67, b's', b'e', b'n', b't', b'_', b'a', b't', 0x00,
        0x64, b'f', b'r', b'o', b'm',
        0x6c, b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8', b'9', b'0', b'1', b'8',
        0x07, 0x07, 0x07, 0x07, 0x07, 0x07, 0x07, 0x07,
    ];
    let err = refused(body);
    assert_eq!(err.reason, Reason::Malformed);
    assert_eq!(err.message_id, MessageId::new("m-1").ok());
    assert_clean_refusal(&err);
}

/// Finding 2 (frame_decode): a map key that is not text was written into
/// the finding's path in its debug form, so a My Number inside such a key
/// came back whole in the refusal text, which had no length bound either.
#[test]
fn fuzz_my_number_inside_a_non_text_key_is_not_echoed() {
    let key = Value::Map(vec![(text("label"), text("123456789018"))]);
    let err = refused(&serial_request_with(vec![(key.clone(), Value::Null)]));
    assert_eq!(err.reason, Reason::MyNumber);
    assert_clean_refusal(&err);
    // The path names such a key `<key>`, never its contents.
    assert_eq!(
        screen::screen(&Value::Map(vec![(key, Value::Null)])),
        Some(screen::Finding::MyNumber {
            path: "<key>.label".into()
        })
    );
    assert_eq!(
        screen::screen(&Value::Map(vec![(text("n-123456789018"), Value::Null)])),
        Some(screen::Finding::MyNumber {
            path: "<key>".into()
        })
    );

    // A text key holding one, and a long one.
    let err = refused(&serial_request_with(vec![(
        text("note-123456789018"),
        Value::Null,
    )]));
    assert_eq!(err.reason, Reason::MyNumber);
    assert_clean_refusal(&err);
    let long_key = Value::Array(vec![text(&"k".repeat(10_000)), text("123456789018")]);
    let err = refused(&serial_request_with(vec![(long_key, Value::Null)]));
    assert_eq!(err.reason, Reason::MyNumber);
    assert_clean_refusal(&err);
}

/// Finding 3 (review of finding 1): serde's messages quote the offending
/// value and the text is cut at `MAX_TEXT` bytes; a digit run longer than
/// twelve (so not a My Number) cut at the right place left twelve digits
/// with a valid check digit at the end of the refusal.
#[test]
fn fuzz_cutting_a_refusal_never_leaves_a_my_number() {
    for pad in 380..560 {
        let value = format!("{}1234567890180000", "a".repeat(pad));
        let mut entries = header("serial_request");
        entries.push((text("purpose"), text(&value)));
        let err = refused(&cbor(&Value::Map(entries)));
        assert_eq!(err.reason, Reason::InvalidField, "pad {pad}");
        assert_clean_refusal(&err);
    }
}

/// Finding 4 (screen target): the screen looked at integers only when
/// their decimal form was exactly twelve characters, so a My Number sent
/// as a negative integer (`-123456789018`) passed, into `sent_at` and on
/// to the next hop; floats were not looked at at all.
#[test]
fn fuzz_my_number_as_a_negative_integer_or_a_float_is_refused() {
    let mut entries = header("serial_request");
    entries[3].1 = Value::Integer((-123_456_789_018i64).into());
    entries.push((text("purpose"), text("query")));
    let err = refused(&cbor(&Value::Map(entries)));
    assert_eq!(err.reason, Reason::MyNumber);
    assert_clean_refusal(&err);

    let err = refused(&serial_request_with(vec![(
        text("x"),
        Value::Float(123_456_789_018.0),
    )]));
    assert_eq!(err.reason, Reason::MyNumber);
    assert_clean_refusal(&err);

    // A float where a code is expected: refused for the number, not echoed
    // by serde's "invalid type" message.
    let mut entries = header("serial_request");
    entries.push((text("purpose"), Value::Float(123_456_789_018.0)));
    let err = refused(&cbor(&Value::Map(entries)));
    assert_eq!(err.reason, Reason::MyNumber);
    assert_clean_refusal(&err);

    // Integers that merely look long are not My Numbers.
    let mut entries = header("serial_request");
    entries[3].1 = Value::Integer((-123_456_789_012i64).into());
    entries.push((text("purpose"), text("query")));
    assert!(Frame::decode_body(&cbor(&Value::Map(entries))).is_ok());
}
