//! Refusal scenarios: for each reason code the relay can give, one
//! attempt that must provoke it, thrown at a running [`Testbed`]. The
//! integration tests assert each outcome; `make demo` prints them. Each
//! scenario returns what the box actually answered, so a wrong answer is
//! shown rather than hidden.

use std::time::Duration;

use ciborium::Value;
use ifrelay_proto::*;

use crate::testbed::{agencies, prefix, Testbed, TestbedError};
use ifrelay::net::{now_millis, IdGen, Link, LinkError};

/// What one scenario provoked.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Short name of the attempt.
    pub name: &'static str,
    pub expected: Reason,
    /// The reason the box (or the core, for permits) gave; `None` when the
    /// attempt was not refused at all.
    pub got: Option<Reason>,
    /// The box's text, or what else happened.
    pub detail: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.got == Some(self.expected)
    }
}

fn code<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse()
        .expect("invariant: scenario code literals are valid")
}

fn outcome(name: &'static str, expected: Reason, reply: Result<Frame, LinkError>) -> Outcome {
    match reply {
        Ok(frame) => match frame.body {
            Body::Refused(r) => Outcome {
                name,
                expected,
                got: Some(r.reason),
                detail: r.text,
            },
            Body::PrefixResult(PrefixResult {
                ok: false, reason, ..
            }) => Outcome {
                name,
                expected,
                got: reason,
                detail: "prefix check answered NG".into(),
            },
            other => Outcome {
                name,
                expected,
                got: None,
                detail: format!("not refused: answered {}", other.type_name()),
            },
        },
        Err(e) => Outcome {
            name,
            expected,
            got: None,
            detail: format!("no answer: {e}"),
        },
    }
}

/// Encodes a CBOR map as a frame (length prefix included).
fn raw_frame(entries: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect(),
    );
    let mut body = Vec::new();
    // Writing a Value into a Vec cannot fail.
    let _ = ciborium::into_writer(&map, &mut body);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn header(ids: &IdGen, from: &Party, type_name: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("v", Value::Integer(1.into())),
        ("id", Value::Text(ids.next().to_string())),
        ("type", Value::Text(type_name.into())),
        ("sent_at", Value::Integer(now_millis().into())),
        ("from", Value::serialized(from).unwrap_or(Value::Null)),
    ]
}

/// A frame with `fields` merged into the typed body of `body`.
fn frame_with(
    ids: &IdGen,
    from: &Party,
    body: &Body,
    extra: Vec<(&'static str, Value)>,
) -> Vec<u8> {
    let frame = Frame::new(ids.next(), from.clone(), now_millis(), body.clone());
    let bytes = frame.encode_body();
    let Ok(Value::Map(mut entries)) = ciborium::from_reader::<Value, _>(&bytes[..]) else {
        return Vec::new();
    };
    for (k, v) in extra {
        entries.push((Value::Text(k.into()), v));
    }
    let mut body = Vec::new();
    let _ = ciborium::into_writer(&Value::Map(entries), &mut body);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

async fn serial(link: &mut Link, ids: &IdGen, from: &Party) -> Result<Serial, TestbedError> {
    let reply = link
        .request(&Frame::new(
            ids.next(),
            from.clone(),
            now_millis(),
            Body::SerialRequest(SerialRequest {
                purpose: SerialPurpose::Query,
            }),
        ))
        .await?;
    match reply.body {
        Body::SerialIssued(s) => Ok(s.serial),
        other => Err(format!("serial request answered {}", other.type_name()).into()),
    }
}

async fn send(link: &mut Link, ids: &IdGen, from: &Party, body: Body) -> Result<Frame, LinkError> {
    link.request(&Frame::new(ids.next(), from.clone(), now_millis(), body))
        .await
}

/// Runs every scenario against `bed` (which must be freshly started and
/// idle) and returns the outcomes in a fixed order.
///
/// # Errors
/// When the scenarios cannot be set up (a link cannot be opened, a serial
/// cannot be had); a wrong answer is an [`Outcome`], not an error.
pub async fn run_all(bed: &Testbed) -> Result<Vec<Outcome>, TestbedError> {
    let (a, b) = agencies();
    let node = &bed.nodes[0];
    let ims = Party::ims(a.clone());
    let box_a = Party::is(a.clone());
    let ids = IdGen::new(format!("scn-{}", now_millis()))?;
    let mut link = bed
        .pki
        .link(&ims, &box_a, node.config.listen.agency_side)
        .await?;
    let mut out = Vec::new();

    // ---- frames that cannot be read
    out.push(outcome(
        "garbage instead of CBOR",
        Reason::Malformed,
        link.send_raw(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd]).await,
    ));
    let mut h = header(&ids, &ims, MessageType::SerialRequest.as_str());
    h[0].1 = Value::Integer(9.into());
    h.push(("purpose", Value::Text("query".into())));
    out.push(outcome(
        "protocol version 9",
        Reason::UnsupportedVersion,
        link.send_raw(&raw_frame(h)).await,
    ));
    out.push(outcome(
        "unknown message type",
        Reason::UnknownType,
        link.send_raw(&raw_frame(header(&ids, &ims, "teleport")))
            .await,
    ));
    let mut h = header(&ids, &ims, MessageType::PrefixCheck.as_str());
    h.push(("serial", Value::Text("131016-20261122-1-1".into())));
    out.push(outcome(
        "prefix check without a prefix",
        Reason::MissingField,
        link.send_raw(&raw_frame(h)).await,
    ));
    let mut h = header(&ids, &ims, MessageType::SerialRequest.as_str());
    h.push(("purpose", Value::Text("lunch".into())));
    out.push(outcome(
        "serial request for an unknown purpose",
        Reason::InvalidField,
        link.send_raw(&raw_frame(h)).await,
    ));
    let serial_req = Body::SerialRequest(SerialRequest {
        purpose: SerialPurpose::Query,
    });
    out.push(outcome(
        "a My Number in a header field",
        Reason::MyNumber,
        link.send_raw(&frame_with(
            &ids,
            &ims,
            &serial_req,
            vec![("note", Value::Text("123456789018".into()))],
        ))
        .await,
    ));
    out.push(outcome(
        "a name field in the header",
        Reason::BasicFour,
        link.send_raw(&frame_with(
            &ids,
            &ims,
            &serial_req,
            vec![("name", Value::Text("Yamada Taro".into()))],
        ))
        .await,
    ));

    // ---- who may send what
    out.push(outcome(
        "frame claiming another agency's IMS",
        Reason::Identity,
        send(&mut link, &ids, &Party::ims(b.clone()), serial_req.clone()).await,
    ));
    out.push(outcome(
        "IMS sending a permit",
        Reason::Role,
        send(
            &mut link,
            &ids,
            &ims,
            Body::Permit(PermitIssued {
                serial: code("131016-20261122-1-1"),
                permit: SignedPermit {
                    signed: vec![1],
                    sig: vec![2],
                },
            }),
        )
        .await,
    ));

    // ---- process rules
    let ab = prefix(&a, &b, "JM010");
    out.push(outcome(
        "prefix check for an unknown serial",
        Reason::UnknownSerial,
        send(
            &mut link,
            &ids,
            &ims,
            Body::PrefixCheck(PrefixCheck {
                serial: code("131016-19990101-1-1"),
                prefix: ab.clone(),
            }),
        )
        .await,
    ));
    let s = serial(&mut link, &ids, &ims).await?;
    out.push(outcome(
        "prefix check for another agency's query",
        Reason::NotOwnAgency,
        send(
            &mut link,
            &ids,
            &ims,
            Body::PrefixCheck(PrefixCheck {
                serial: s.clone(),
                prefix: prefix(&b, &a, "JM010"),
            }),
        )
        .await,
    ));
    let mut unlisted = ab.clone();
    unlisted.business = code("JM777");
    out.push(outcome(
        "prefix check for an unlisted business",
        Reason::PrefixNotListed,
        send(
            &mut link,
            &ids,
            &ims,
            Body::PrefixCheck(PrefixCheck {
                serial: s.clone(),
                prefix: unlisted,
            }),
        )
        .await,
    ));
    out.push(outcome(
        "permit request before a prefix check",
        Reason::NoBinding,
        send(
            &mut link,
            &ids,
            &ims,
            Body::PermitRequest(PermitRequest {
                serial: s.clone(),
                prefix: ab.clone(),
            }),
        )
        .await,
    ));
    let bound = send(
        &mut link,
        &ids,
        &ims,
        Body::PrefixCheck(PrefixCheck {
            serial: s.clone(),
            prefix: ab.clone(),
        }),
    )
    .await?;
    if !matches!(
        bound.body,
        Body::PrefixResult(PrefixResult { ok: true, .. })
    ) {
        return Err(format!("prefix check of {s} was not OK: {bound:?}").into());
    }
    let dummy_permit = SignedPermit {
        signed: vec![0xa0],
        sig: vec![0; 64],
    };
    let query = |serial: &Serial, prefix: &Prefix, permit: &SignedPermit, key: Vec<u8>| {
        Body::Query(Query {
            serial: serial.clone(),
            prefix: prefix.clone(),
            permit: permit.clone(),
            public_key: key,
            code: code("QWERTYASDFGH"),
        })
    };
    out.push(outcome(
        "query before the permit",
        Reason::OutOfSequence,
        send(
            &mut link,
            &ids,
            &ims,
            query(&s, &ab, &dummy_permit, vec![7; 32]),
        )
        .await,
    ));
    // Get the serial permitted: the core answers the permit request; the
    // box relays the permit to the IMS simulator, which does not know the
    // serial; the box's process is permitted all the same.
    send(
        &mut link,
        &ids,
        &ims,
        Body::PermitRequest(PermitRequest {
            serial: s.clone(),
            prefix: ab.clone(),
        }),
    )
    .await?;
    let mut wrong = ab.clone();
    wrong.items.truncate(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let wrong_prefix = loop {
        let r = outcome(
            "query with another prefix than bound",
            Reason::WrongPrefix,
            send(
                &mut link,
                &ids,
                &ims,
                query(&s, &wrong, &dummy_permit, vec![7; 32]),
            )
            .await,
        );
        if r.got != Some(Reason::OutOfSequence) || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    out.push(wrong_prefix);
    let mut h = header(&ids, &ims, MessageType::Query.as_str());
    h.push(("serial", Value::Text(s.to_string())));
    h.push(("prefix", Value::serialized(&ab).unwrap_or(Value::Null)));
    h.push(("public_key", Value::Bytes(vec![7; 32])));
    h.push(("code", Value::Text("QWERTYASDFGH".into())));
    out.push(outcome(
        "query without a permit",
        Reason::NoPermit,
        link.send_raw(&raw_frame(h)).await,
    ));
    out.push(outcome(
        "query without a public key",
        Reason::NoPublicKey,
        send(
            &mut link,
            &ids,
            &ims,
            query(&s, &ab, &dummy_permit, Vec::new()),
        )
        .await,
    ));
    out.push(outcome(
        "query with a forged permit",
        Reason::PermitInvalid,
        send(
            &mut link,
            &ids,
            &ims,
            query(&s, &ab, &dummy_permit, vec![7; 32]),
        )
        .await,
    ));

    // ---- the core refuses a permit; the box relays the refusal
    let refused = node.ims.run_query(prefix(&a, &b, "JM099")).await;
    out.push(Outcome {
        name: "permit for a business the core refuses",
        expected: Reason::PermitRefused,
        got: refused.as_ref().err().and_then(|e| e.reason()),
        detail: match &refused {
            Ok(_) => "the flow completed".into(),
            Err(e) => e.to_string(),
        },
    });

    // ---- core side: a box that is not the provider sends a provision
    let stranger = Party::is(code("011002"));
    let mut peer_link = bed
        .pki
        .link(&stranger, &box_a, node.config.listen.core_side)
        .await?;
    out.push(outcome(
        "provision from a box that is not the provider",
        Reason::Route,
        send(
            &mut peer_link,
            &ids,
            &stranger,
            Body::Provision(Provision {
                serial: s.clone(),
                prefix: ab.clone(),
                permit: dummy_permit.clone(),
                body: vec![1, 2, 3],
            }),
        )
        .await,
    ));
    out.push(outcome(
        "a box sending a query to another box",
        Reason::Role,
        send(
            &mut peer_link,
            &ids,
            &stranger,
            query(&s, &ab, &dummy_permit, vec![7; 32]),
        )
        .await,
    ));

    // ---- the core sends distributions that are not the operator's
    let core = Party::core();
    let mut core_link = bed
        .pki
        .link(&core, &box_a, node.config.listen.core_side)
        .await?;
    let op = bed.pki.operator();
    let fields = bed.core.current_distribution_fields();
    let newer = DistributionFields {
        version: fields.version + 1,
        ..fields.clone()
    };
    let stranger_op = ifrelay_devpki::DevOperator::generate()?;
    let mut altered = newer.clone();
    altered.prefixes.clear();
    let mut expired = newer.clone();
    expired.not_after = now_millis() - 1;
    let mut unsigned = op.sign(&newer);
    unsigned.sig.clear();
    let attempts: [(&'static str, Reason, Distribution); 5] = [
        (
            "distribution signed by a key no pinned root certified",
            Reason::DistUncertified,
            stranger_op.sign(&newer),
        ),
        (
            "distribution whose list was altered after signing",
            Reason::DistSignature,
            Distribution {
                signed: op.sign(&altered).signed,
                ..op.sign(&newer)
            },
        ),
        (
            "distribution already expired",
            Reason::DistExpired,
            op.sign(&expired),
        ),
        (
            "distribution without a signature",
            Reason::DistUnsigned,
            unsigned,
        ),
        (
            "distribution of the version in force, signed again",
            Reason::DistVersion,
            op.sign(&fields),
        ),
    ];
    for (name, expected, d) in attempts {
        out.push(outcome(
            name,
            expected,
            send(&mut core_link, &ids, &core, Body::Distribution(d)).await,
        ));
    }

    // ---- an IMS certificate on the core-side listener
    let mut wrong_side = bed
        .pki
        .link(&ims, &box_a, node.config.listen.core_side)
        .await?;
    // The box refuses right after the handshake, before any frame, with
    // a refusal that answers no frame id: read it raw.
    let probe = Frame::new(ids.next(), ims.clone(), now_millis(), serial_req.clone());
    out.push(outcome(
        "IMS certificate on the core-side listener",
        Reason::Role,
        wrong_side.send_raw(&probe.encode()).await,
    ));

    // ---- an oversized frame: refused before its body is read
    out.push(outcome(
        "frame announcing 2 GiB",
        Reason::TooLarge,
        link.send_raw(&0x7fff_ffffu32.to_be_bytes()).await,
    ));
    Ok(out)
}

/// The reason codes no scenario here provokes, with where they are
/// provoked instead, or why they cannot be from outside.
pub const NOT_PROVOKED: &[(Reason, &str)] = &[
    (
        Reason::NoPrefixList,
        "a box never sent a distribution: crates/testkit/tests/refusals.rs",
    ),
    (
        Reason::PrefixListExpired,
        "a distribution left to expire: crates/testkit/tests/trust.rs",
    ),
    (
        Reason::Busy,
        "connection limit reached: crates/testkit/tests/reliability.rs",
    ),
    (
        Reason::Duplicate,
        "one message id for two frames: crates/testkit/tests/reliability.rs",
    ),
    (
        Reason::NotInService,
        "outside service hours (the demo boxes are always open): crates/testkit/tests/reliability.rs",
    ),
    (Reason::Store, "a full disk: crates/testkit/tests/disk_full.rs"),
    (
        Reason::PeerUnreachable,
        "retries run out (process_error notice): crates/testkit/tests/reliability.rs",
    ),
    (
        Reason::PeerStopped,
        "a peer announces it stops (process_error notice): crates/testkit/tests/reliability.rs",
    ),
    (
        Reason::PeerRefused,
        "the next hop refused a relayed frame (process_error notice)",
    ),
    (
        Reason::Timeout,
        "a step not answered in time (process_error notice): crates/testkit/tests/reliability.rs",
    ),
    (
        Reason::Internal,
        "an internal error cannot be provoked from outside",
    ),
    (
        Reason::Unrecognized,
        "only ever received from a newer peer, never sent",
    ),
];
