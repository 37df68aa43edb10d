//! The simulators' parts against stand-in boxes, over real mutual TLS on
//! loopback with a development PKI.
//!
//! Covers, from the simulators' side: the core answering a permit request
//! with `accepted` and then dialling the requester's box with a permit
//! whose Ed25519 signature verifies and whose fields (serial, prefix,
//! route, provider route) match (R-PRM-2), or with `permit_refused` for an
//! unlisted prefix or a refused business; the core routing a query to the
//! provider's box with a converted code and forwarding "query accepted"
//! (R-QRY-1..5), counting completions (R-PRV-4), distributing prefix lists
//! (R-DST-1); identity and role refusals; the provider IMS answering a
//! query with `accepted`, then "query accepted" and a provision whose body
//! decrypts with the requester's key, and "provision complete" after
//! "provision received" (R-QRY-*, R-PRV-1..4).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ifrelay::net::now_millis;
use ifrelay_devpki::DevPki;
use ifrelay_proto::{
    AgencyCode, Body, BusinessCode, Frame, InfoNameCode, ItemCode, Masters, MessageId, Party,
    PermitRequest, PersonCode, Prefix, PrefixEntry, Provision, Query, Reason, Serial, SerialNotice,
    SignedPermit,
};
use ifrelay_testkit::sim::{
    convert_code, sim_payload, CoreSim, ImsSim, RecordingPeer, RequesterKey, SimError,
};
use ifrelay_tls::TlsMaterial;
use ring::signature::{UnparsedPublicKey, ED25519};
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn agency(s: &str) -> AgencyCode {
    AgencyCode::new(s).expect("agency code")
}

fn material(pki: &DevPki, party: &Party) -> TlsMaterial {
    pki.material(&pki.issue(party).expect("issue"))
        .expect("material")
}

const REQ: &str = "131016";
const PROV: &str = "271004";

fn prefix(business: &str, items: &[&str]) -> Prefix {
    let mut p = Prefix {
        requester: agency(REQ),
        business: BusinessCode::new(business).expect("business"),
        provider: agency(PROV),
        info_name: InfoNameCode::new("N020").expect("info name"),
        items: Default::default(),
    };
    for i in items {
        p.items
            .push(ItemCode::new(i).expect("item"))
            .expect("capacity");
    }
    p
}

fn listed() -> Vec<PrefixEntry> {
    ["B010", "B099"]
        .iter()
        .flat_map(|b| {
            ["I001", "I002"].iter().map(move |i| PrefixEntry {
                requester: agency(REQ),
                provider: agency(PROV),
                business: BusinessCode::new(b).expect("business"),
                info_name: InfoNameCode::new("N020").expect("info name"),
                item: ItemCode::new(i).expect("item"),
            })
        })
        .collect()
}

async fn next(rx: &mut UnboundedReceiver<(Party, Frame)>) -> (Party, Frame) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a frame arrives in time")
        .expect("the peer is running")
}

struct Net {
    pki: DevPki,
    core: CoreSim,
    req_box: RecordingPeer,
    req_rx: UnboundedReceiver<(Party, Frame)>,
    prov_box: RecordingPeer,
    prov_rx: UnboundedReceiver<(Party, Frame)>,
}

async fn net() -> Net {
    let pki = DevPki::new().expect("CA");
    let (req_box, req_rx) = RecordingPeer::start(
        Party::is(agency(REQ)),
        any_port(),
        &material(&pki, &Party::is(agency(REQ))),
    )
    .await
    .expect("requester box");
    let (prov_box, prov_rx) = RecordingPeer::start(
        Party::is(agency(PROV)),
        any_port(),
        &material(&pki, &Party::is(agency(PROV))),
    )
    .await
    .expect("provider box");
    let core = CoreSim::start(
        any_port(),
        material(&pki, &Party::core()),
        pki.operator(),
        listed(),
        Masters::default(),
    )
    .await
    .expect("core");
    core.register_box(agency(REQ), req_box.local_addr());
    core.register_box(agency(PROV), prov_box.local_addr());
    Net {
        pki,
        core,
        req_box,
        req_rx,
        prov_box,
        prov_rx,
    }
}

fn refusal(reply: &Frame) -> Reason {
    match &reply.body {
        Body::Refused(r) => r.reason,
        other => panic!("expected refused, got {}", other.type_name()),
    }
}

fn assert_accepted(reply: &Frame, id: &MessageId) {
    match &reply.body {
        Body::Accepted(a) => assert_eq!(&a.in_reply_to, id),
        other => panic!("expected accepted, got {other:?}"),
    }
}

#[tokio::test]
async fn core_issues_verifiable_permits_and_routes_the_query() {
    let mut n = net().await;
    let mut to_core = n
        .req_box
        .connect(&Party::core(), n.core.local_addr())
        .await
        .expect("the box dials the core");

    // R-PRM-2: accepted at once, then the permit on the box's listener.
    let serial = Serial::new("131016-20261122-1-1").expect("serial");
    let asked = prefix("B010", &["I001", "I002"]);
    let frame = n.req_box.frame(Body::PermitRequest(PermitRequest {
        serial: serial.clone(),
        prefix: asked.clone(),
    }));
    let reply = to_core.request(&frame).await.expect("reply");
    assert_accepted(&reply, &frame.header.id);
    let (from, got) = next(&mut n.req_rx).await;
    assert_eq!(from, Party::core());
    assert_eq!(got.header.from, Party::core());
    let Body::Permit(issued) = got.body else {
        panic!("expected a permit, got {}", got.body.type_name());
    };
    assert_eq!(issued.serial, serial);
    let key = n.core.core_public_key();
    assert_eq!(key.len(), 32);
    UnparsedPublicKey::new(&ED25519, &key)
        .verify(&issued.permit.signing_input(), &issued.permit.sig)
        .expect("the permit's signature verifies with the core's key");
    let fields = issued.permit.fields().expect("fields");
    assert_eq!(fields.issuer, Party::core());
    assert_eq!(fields.serial, serial);
    assert_eq!(fields.prefix, asked);
    assert_eq!(fields.route.agency, agency(REQ));
    assert_eq!(fields.route.endpoint, n.req_box.local_addr().to_string());
    assert_eq!(fields.provider_route.agency, agency(PROV));
    assert_eq!(
        fields.provider_route.endpoint,
        n.prov_box.local_addr().to_string()
    );
    assert!(fields.expires_at > now_millis());
    // An altered permit no longer verifies.
    let mut altered = issued.permit.clone();
    if let Some(b) = altered.signed.last_mut() {
        *b ^= 1;
    }
    assert!(UnparsedPublicKey::new(&ED25519, &key)
        .verify(&altered.signing_input(), &altered.sig)
        .is_err());

    // R-QRY-1..5: the query goes to the provider's box with its own code.
    let code = PersonCode::new("QWERTYUIOPASDFGHJKLZ").expect("code");
    let query = Query {
        serial: serial.clone(),
        prefix: asked.clone(),
        permit: issued.permit.clone(),
        public_key: vec![9; 32],
        code: code.clone(),
    };
    let frame = n.req_box.frame(Body::Query(query.clone()));
    assert_accepted(
        &to_core.request(&frame).await.expect("reply"),
        &frame.header.id,
    );
    let (_, got) = next(&mut n.prov_rx).await;
    let Body::Query(routed) = got.body else {
        panic!("expected the query, got {}", got.body.type_name());
    };
    assert_eq!(routed.serial, serial);
    assert_eq!(routed.permit, issued.permit);
    assert_eq!(routed.public_key, query.public_key);
    assert_eq!(routed.code, convert_code(&code, &agency(PROV)));
    assert_ne!(routed.code, code);

    // The provider's "query accepted" is forwarded to the requester's box.
    let mut prov_to_core = n
        .prov_box
        .connect(&Party::core(), n.core.local_addr())
        .await
        .expect("the provider box dials the core");
    let notice = SerialNotice {
        serial: serial.clone(),
    };
    let frame = n.prov_box.frame(Body::QueryAccepted(notice.clone()));
    assert_accepted(
        &prov_to_core.request(&frame).await.expect("reply"),
        &frame.header.id,
    );
    let (_, got) = next(&mut n.req_rx).await;
    assert_eq!(got.body, Body::QueryAccepted(notice.clone()));

    // Only the provider the query went to may accept it.
    let frame = n.req_box.frame(Body::QueryAccepted(notice.clone()));
    assert_eq!(
        refusal(&to_core.request(&frame).await.expect("reply")),
        Reason::Role
    );

    // Completions are counted per serial.
    let frame = n.prov_box.frame(Body::ProvisionComplete(notice.clone()));
    assert_accepted(
        &prov_to_core.request(&frame).await.expect("reply"),
        &frame.header.id,
    );
    for body in [
        Body::ProvisionComplete(notice.clone()),
        Body::QueryComplete(notice.clone()),
    ] {
        let frame = n.req_box.frame(body);
        assert_accepted(
            &to_core.request(&frame).await.expect("reply"),
            &frame.header.id,
        );
    }
    let stats = n
        .core
        .wait_for(WAIT, |s| s.query_complete.get(&serial) == Some(&1))
        .await
        .expect("completions counted");
    assert_eq!(stats.permits_issued, 1);
    assert_eq!(stats.queries_routed, 1);
    assert_eq!(stats.query_accepted_forwarded, 1);
    assert_eq!(stats.provision_complete.get(&serial).map(Vec::len), Some(2));
    assert_eq!(stats.frames_refused, 1);
    let process = n.core.process(&serial).expect("process kept");
    assert!(process.query_routed && process.query_accepted);
}

#[tokio::test]
async fn core_refuses_unlisted_prefixes_refused_businesses_and_forged_frames() {
    let mut n = net().await;
    let mut to_core = n
        .req_box
        .connect(&Party::core(), n.core.local_addr())
        .await
        .expect("the box dials the core");
    n.core
        .refuse_business(BusinessCode::new("B099").expect("business"));

    for (i, asked) in [
        prefix("B010", &["I001", "I777"]), // item not listed
        prefix("B099", &["I001"]),         // business refused
    ]
    .into_iter()
    .enumerate()
    {
        let serial = Serial::new(&format!("131016-20261122-1-{}", 10 + i)).expect("serial");
        let frame = n.req_box.frame(Body::PermitRequest(PermitRequest {
            serial: serial.clone(),
            prefix: asked,
        }));
        assert_accepted(
            &to_core.request(&frame).await.expect("reply"),
            &frame.header.id,
        );
        let (_, got) = next(&mut n.req_rx).await;
        let Body::PermitRefused(r) = got.body else {
            panic!("expected permit_refused, got {}", got.body.type_name());
        };
        assert_eq!(r.serial, serial);
        assert_eq!(r.reason, Reason::PermitRefused);
        assert!(!r.text.is_empty());
    }

    // A prefix naming another requester than the asking box.
    let mut other = prefix("B010", &["I001"]);
    other.requester = agency(PROV);
    let frame = n.req_box.frame(Body::PermitRequest(PermitRequest {
        serial: Serial::new("131016-20261122-1-20").expect("serial"),
        prefix: other,
    }));
    assert_accepted(
        &to_core.request(&frame).await.expect("reply"),
        &frame.header.id,
    );
    let (_, got) = next(&mut n.req_rx).await;
    assert!(matches!(got.body, Body::PermitRefused(_)));

    // A frame whose `from` is not the certificate's party.
    let forged = Frame::new(
        MessageId::new("forged-1").expect("id"),
        Party::is(agency(PROV)),
        now_millis(),
        Body::PermitRequest(PermitRequest {
            serial: Serial::new("271004-20261122-1-1").expect("serial"),
            prefix: prefix("B010", &["I001"]),
        }),
    );
    let reply = to_core.request(&forged).await.expect("reply");
    assert_eq!(refusal(&reply), Reason::Identity);

    // A query with a permit the core did not sign.
    let frame = n.req_box.frame(Body::Query(Query {
        serial: Serial::new("131016-20261122-1-30").expect("serial"),
        prefix: prefix("B010", &["I001"]),
        permit: SignedPermit {
            signed: vec![1, 2, 3],
            sig: vec![0; 64],
        },
        public_key: vec![9; 32],
        code: PersonCode::new("ABCDEFGHIJ").expect("code"),
    }));
    assert_eq!(
        refusal(&to_core.request(&frame).await.expect("reply")),
        Reason::PermitInvalid
    );

    // "Query accepted" for a serial the core never routed.
    let frame = n.req_box.frame(Body::QueryAccepted(SerialNotice {
        serial: Serial::new("131016-20261122-9-9").expect("serial"),
    }));
    assert_eq!(
        refusal(&to_core.request(&frame).await.expect("reply")),
        Reason::UnknownSerial
    );

    // An intermediate server may not talk to the core at all.
    let ims_tls = material(&n.pki, &Party::ims(agency(REQ)));
    let (ims_peer, _rx) = RecordingPeer::start(Party::ims(agency(REQ)), any_port(), &ims_tls)
        .await
        .expect("stand-in ims");
    let mut ims_link = ims_peer
        .connect(&Party::core(), n.core.local_addr())
        .await
        .expect("dial");
    let frame = ims_peer.frame(Body::QueryComplete(SerialNotice {
        serial: Serial::new("131016-20261122-1-1").expect("serial"),
    }));
    assert_eq!(
        refusal(&ims_link.request(&frame).await.expect("reply")),
        Reason::Role
    );

    let stats = n.core.stats();
    assert_eq!(stats.permits_refused, 3);
    assert_eq!(stats.permits_issued, 0);
    assert_eq!(stats.frames_refused, 4);
}

#[tokio::test]
async fn core_distributes_to_every_registered_box() {
    let mut n = net().await;
    let reached = n
        .core
        .distribute(7, listed(), Masters::default())
        .await
        .expect("distributed");
    assert_eq!(reached, 2);
    for rx in [&mut n.req_rx, &mut n.prov_rx] {
        let (_, got) = next(rx).await;
        let Body::Distribution(d) = got.body else {
            panic!("expected a distribution, got {}", got.body.type_name());
        };
        // Signed under the network's root; the IMS and the box check it.
        let t = ifrelay_proto::distribution::verify(
            &d,
            &n.pki.distribution_roots(),
            ifrelay::net::now_millis(),
        )
        .expect("verifies under the pinned root");
        assert_eq!(t.fields.version, 7);
        assert_eq!(t.fields.prefixes.len(), listed().len());
        assert_eq!(t.fields.core_keys.len(), 1);
        assert_eq!(t.fields.core_keys[0].key, n.core.core_public_key());
    }
    assert_eq!(n.core.stats().distributions_delivered, 2);

    // A box that refuses makes distribute fail, naming it; the others
    // still get the distribution.
    let pki = &n.pki;
    let refusing = Arc::new(|_: &Party, f: &Frame| {
        Some(Body::Refused(ifrelay_proto::Refused {
            in_reply_to: Some(f.header.id.clone()),
            reason: Reason::InvalidField,
            text: "not today".into(),
        }))
    });
    let third = agency("011002");
    let (peer, _rx) = RecordingPeer::start_with(
        Party::is(third.clone()),
        any_port(),
        &material(pki, &Party::is(third.clone())),
        refusing,
    )
    .await
    .expect("third box");
    n.core.register_box(third.clone(), peer.local_addr());
    let err = n
        .core
        .distribute(8, listed(), Masters::default())
        .await
        .expect_err("one box refuses");
    assert!(
        matches!(err, SimError::Delivery { ref to, .. } if to == &Party::is(third.clone())),
        "{err}"
    );
    let stats = n.core.stats();
    assert_eq!(stats.distributions_delivered, 4);
    assert_eq!(stats.peer_refusals.len(), 1);
    assert_eq!(stats.peer_refusals[0].to, Party::is(third));
    assert_eq!(stats.peer_refusals[0].reason, Reason::InvalidField);
}

#[tokio::test]
async fn provider_ims_answers_a_query_with_an_encrypted_provision() {
    let pki = DevPki::new().expect("CA");
    let prov = agency(PROV);
    let (box_p, mut rx) = RecordingPeer::start(
        Party::is(prov.clone()),
        any_port(),
        &material(&pki, &Party::is(prov.clone())),
    )
    .await
    .expect("stand-in box");
    let ims = ImsSim::start(
        prov.clone(),
        any_port(),
        material(&pki, &Party::ims(prov.clone())),
        box_p.local_addr(),
        pki.distribution_roots(),
    )
    .await
    .expect("ims");
    let mut link = box_p
        .connect(&Party::ims(prov.clone()), ims.local_addr())
        .await
        .expect("the box dials its IMS");

    let key = RequesterKey::generate().expect("key");
    let serial = Serial::new("131016-20261122-1-1").expect("serial");
    let asked = prefix("B010", &["I001", "I002"]);
    let code = PersonCode::new("ZXCVBNMASDFGHJKLQWER").expect("code");
    let permit = SignedPermit {
        signed: vec![0xa0],
        sig: vec![7; 64],
    };
    let frame = box_p.frame(Body::Query(Query {
        serial: serial.clone(),
        prefix: asked.clone(),
        permit: permit.clone(),
        public_key: key.public_bytes().to_vec(),
        code: code.clone(),
    }));
    assert_accepted(
        &link.request(&frame).await.expect("reply"),
        &frame.header.id,
    );

    // "Query accepted" first, then the provision, on the box's listener.
    let (from, got) = next(&mut rx).await;
    assert_eq!(from, Party::ims(prov.clone()));
    assert_eq!(
        got.body,
        Body::QueryAccepted(SerialNotice {
            serial: serial.clone()
        })
    );
    let (_, got) = next(&mut rx).await;
    let Body::Provision(Provision {
        serial: s,
        prefix: p,
        permit: pm,
        body,
    }) = got.body
    else {
        panic!("expected the provision, got {}", got.body.type_name());
    };
    assert_eq!((s, p, pm), (serial.clone(), asked.clone(), permit));
    let payload = key.decrypt(&body).expect("the body decrypts");
    assert_eq!(payload, sim_payload(&serial, &asked, &code));
    let other = RequesterKey::generate().expect("key");
    assert!(other.decrypt(&body).is_err());

    // "Provision received" is answered with "provision complete".
    let frame = box_p.frame(Body::ProvisionReceived(SerialNotice {
        serial: serial.clone(),
    }));
    assert_accepted(
        &link.request(&frame).await.expect("reply"),
        &frame.header.id,
    );
    let (_, got) = next(&mut rx).await;
    assert_eq!(
        got.body,
        Body::ProvisionComplete(SerialNotice {
            serial: serial.clone()
        })
    );
    let stats = ims
        .wait_for(WAIT, |s| s.provisions_provided == 1)
        .await
        .expect("provision counted");
    assert_eq!(stats.queries_received, 1);
    assert_eq!(stats.provision_received_acks, 1);

    // Unknown serials, a bad public key, and a stranger are refused.
    let frame = box_p.frame(Body::ProvisionReceived(SerialNotice {
        serial: Serial::new("131016-20261122-1-99").expect("serial"),
    }));
    assert_eq!(
        refusal(&link.request(&frame).await.expect("reply")),
        Reason::UnknownSerial
    );
    let frame = box_p.frame(Body::Query(Query {
        serial: Serial::new("131016-20261122-1-2").expect("serial"),
        prefix: asked.clone(),
        permit: SignedPermit {
            signed: vec![0xa0],
            sig: vec![7; 64],
        },
        public_key: vec![1; 5],
        code,
    }));
    assert_eq!(
        refusal(&link.request(&frame).await.expect("reply")),
        Reason::NoPublicKey
    );
    let stranger = Party::is(agency(REQ));
    let (peer, _rx2) =
        RecordingPeer::start(stranger.clone(), any_port(), &material(&pki, &stranger))
            .await
            .expect("stranger");
    let mut strange_link = peer
        .connect(&Party::ims(prov.clone()), ims.local_addr())
        .await
        .expect("dial");
    let frame = peer.frame(Body::ProvisionReceived(SerialNotice { serial }));
    assert_eq!(
        refusal(&strange_link.request(&frame).await.expect("reply")),
        Reason::Role
    );
    assert_eq!(ims.stats().frames_refused, 3);
    ims.shutdown().await;
}
