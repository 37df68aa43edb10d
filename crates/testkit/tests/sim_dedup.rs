//! The simulators behave like the box where a crash test needs them to:
//! at-least-once delivery with duplicate suppression on receipt, evidence
//! of events delivered twice, and requests that survive a box that is
//! down for a while (protocol.md §5.2, §5.3; DESIGN "Wire format").
//!
//! Covers, over real mutual TLS on loopback against stand-in boxes: a
//! frame sent again under the same id is answered with the same reply and
//! handled once (a provider IMS provides once, the core issues one
//! permit), the same id for another frame is refused `E_DUPLICATE`, the
//! remembered ids are bounded; `ImsSim::double_deliveries` reports an
//! event delivered under two ids and not a same-id resend; a resilient IMS
//! request and a retrying core delivery survive their box's listener being
//! down for a second; and a `process_error` ends `run_query` at every step
//! that waits on the box, with `FlowError::reason` naming it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ifrelay::net::{now_millis, Link};
use ifrelay_devpki::DevPki;
use ifrelay_proto::{
    AgencyCode, Body, BusinessCode, Frame, InfoNameCode, ItemCode, Masters, MessageId, Party,
    PermitFields, PermitId, PermitIssued, PermitRequest, PersonCode, Prefix, PrefixEntry,
    PrefixResult, ProcessError, Provision, Query, Reason, Refused, Route, Serial, SerialIssued,
    SerialNotice, SignedPermit,
};
use ifrelay_testkit::sim::serve::Answer;
use ifrelay_testkit::sim::{
    encrypt_to, CoreSim, FlowErrorKind, FlowStep, ImsOptions, ImsSim, NetOptions, RecordingPeer,
};
use ifrelay_tls::TlsMaterial;
use tokio::sync::mpsc::UnboundedReceiver;

const REQ: &str = "131016";
const PROV: &str = "271004";
const WAIT: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A loopback address nobody listens on right now (bound, then freed).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind(any_port()).expect("bind");
    l.local_addr().expect("addr")
}

fn agency(s: &str) -> AgencyCode {
    AgencyCode::new(s).expect("agency code")
}

fn id(s: &str) -> MessageId {
    MessageId::new(s).expect("message id")
}

fn material(pki: &DevPki, party: &Party) -> TlsMaterial {
    pki.material(&pki.issue(party).expect("issue"))
        .expect("material")
}

fn prefix() -> Prefix {
    let mut p = Prefix {
        requester: agency(REQ),
        business: BusinessCode::new("B010").expect("business"),
        provider: agency(PROV),
        info_name: InfoNameCode::new("N020").expect("info name"),
        items: Default::default(),
    };
    p.items
        .push(ItemCode::new("I001").expect("item"))
        .expect("capacity");
    p
}

fn listed() -> Vec<PrefixEntry> {
    vec![PrefixEntry {
        requester: agency(REQ),
        provider: agency(PROV),
        business: BusinessCode::new("B010").expect("business"),
        info_name: InfoNameCode::new("N020").expect("info name"),
        item: ItemCode::new("I001").expect("item"),
    }]
}

/// A permit whose fields fit `serial` and [`prefix`]; its signature is
/// not checked by an IMS that has no distribution yet.
fn permit(serial: &Serial) -> SignedPermit {
    let mut p = SignedPermit::unsigned(&PermitFields {
        permit_id: PermitId::new("P-sim-dedup-1").expect("permit id"),
        issuer: Party::core(),
        serial: serial.clone(),
        prefix: prefix(),
        route: Route {
            agency: agency(REQ),
            endpoint: "127.0.0.1:1".into(),
        },
        provider_route: Route {
            agency: agency(PROV),
            endpoint: "127.0.0.1:2".into(),
        },
        issued_at: now_millis(),
        expires_at: now_millis() + 600_000,
    });
    p.sig = vec![7; 64];
    p
}

async fn next(rx: &mut UnboundedReceiver<(Party, Frame)>) -> Frame {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a frame arrives in time")
        .expect("the peer is running")
        .1
}

/// Nothing more arrives for a while.
async fn quiet(rx: &mut UnboundedReceiver<(Party, Frame)>) {
    if let Ok(Some((_, f))) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        panic!("unexpected further frame {}", f.body.type_name());
    }
}

fn refusal(reply: &Frame) -> Reason {
    match &reply.body {
        Body::Refused(r) => r.reason,
        other => panic!("expected refused, got {other:?}"),
    }
}

/// A stand-in box of agency `code` that answers serial requests and
/// prefix checks itself and accepts everything else.
fn box_answers() -> Answer {
    let counter = Arc::new(AtomicU64::new(1));
    Arc::new(move |_: &Party, f: &Frame| match &f.body {
        Body::SerialRequest(_) => {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            Some(Body::SerialIssued(SerialIssued {
                in_reply_to: f.header.id.clone(),
                serial: Serial::new(&format!("{REQ}-20261122-1-{n}")).expect("serial"),
            }))
        }
        Body::PrefixCheck(c) => Some(Body::PrefixResult(PrefixResult {
            in_reply_to: f.header.id.clone(),
            serial: c.serial.clone(),
            ok: true,
            reason: None,
        })),
        _ => None,
    })
}

struct Provider {
    box_p: RecordingPeer,
    rx: UnboundedReceiver<(Party, Frame)>,
    ims: ImsSim,
}

async fn provider() -> Provider {
    let pki = DevPki::new().expect("CA");
    let prov = agency(PROV);
    let (box_p, rx) = RecordingPeer::start(
        Party::is(prov.clone()),
        any_port(),
        &material(&pki, &Party::is(prov.clone())),
    )
    .await
    .expect("stand-in box");
    let ims = ImsSim::start(
        prov.clone(),
        any_port(),
        material(&pki, &Party::ims(prov)),
        box_p.local_addr(),
        pki.distribution_roots(),
    )
    .await
    .expect("ims");
    Provider { box_p, rx, ims }
}

fn query(serial: &Serial, public_key: Vec<u8>) -> Body {
    Body::Query(Query {
        serial: serial.clone(),
        prefix: prefix(),
        permit: permit(serial),
        public_key,
        code: PersonCode::new("ZXCVBNMASDFGHJKLQWER").expect("code"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_query_is_answered_again_and_provided_once() {
    let mut p = provider().await;
    let ims_party = Party::ims(agency(PROV));
    let serial = Serial::new("131016-20261122-1-1").expect("serial");
    let frame = p.box_p.frame(query(&serial, vec![9; 32]));
    let mut link = p
        .box_p
        .connect(&ims_party, p.ims.local_addr())
        .await
        .expect("dial");
    let first = link.request(&frame).await.expect("first reply");
    assert!(matches!(first.body, Body::Accepted(_)), "{first:?}");
    // The same frame again on the same link, later (another sent_at), and
    // on a second link, as a box whose replies were lost would send it.
    let mut later = frame.clone();
    later.header.sent_at += 1000;
    let second = link.request(&later).await.expect("second reply");
    let mut other_link = p
        .box_p
        .connect(&ims_party, p.ims.local_addr())
        .await
        .expect("dial");
    let third = other_link.request(&frame).await.expect("third reply");
    assert_eq!(second.body, first.body, "the same reply again");
    assert_eq!(third.body, first.body, "the same reply on another link");

    // Handled once: one "query accepted", one provision, nothing more.
    assert!(matches!(next(&mut p.rx).await.body, Body::QueryAccepted(_)));
    assert!(matches!(next(&mut p.rx).await.body, Body::Provision(_)));
    quiet(&mut p.rx).await;
    let stats = p
        .ims
        .wait_for(WAIT, |s| s.provisions_provided == 1)
        .await
        .expect("provision delivered");
    assert_eq!(stats.queries_received, 1);
    assert_eq!(stats.duplicates_received, 2);
    assert_eq!(stats.frames_refused, 0);

    // "Provision received" twice under one id: one "provision complete".
    let notice = p.box_p.frame(Body::ProvisionReceived(SerialNotice {
        serial: serial.clone(),
    }));
    for _ in 0..2 {
        let reply = link.request(&notice).await.expect("reply");
        assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");
    }
    assert!(matches!(
        next(&mut p.rx).await.body,
        Body::ProvisionComplete(_)
    ));
    quiet(&mut p.rx).await;
    assert_eq!(p.ims.stats().provision_received_acks, 1);

    // The id of the query reused for a frame that says something else.
    let mut reused = p.box_p.frame(query(&serial, vec![8; 32]));
    reused.header.id = frame.header.id.clone();
    let reply = link.request(&reused).await.expect("reply");
    assert_eq!(refusal(&reply), Reason::Duplicate);
    quiet(&mut p.rx).await;

    // Same-id resends are not double deliveries.
    assert!(p.ims.double_deliveries().is_empty());
    p.ims.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_frame_is_not_remembered_and_memory_is_bounded() {
    let pki = DevPki::new().expect("CA");
    let me = Party::is(agency(REQ));
    // Busy for the first copy of each id, accepted afterwards.
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let answer: Answer = Arc::new(move |_: &Party, f: &Frame| {
        let first = seen
            .lock()
            .expect("lock")
            .insert(f.header.id.as_str().to_owned());
        first.then(|| {
            Body::Refused(Refused {
                in_reply_to: Some(f.header.id.clone()),
                reason: Reason::Busy,
                text: "busy".into(),
            })
        })
    });
    let opts = NetOptions {
        dedup_capacity: 2,
        ..NetOptions::default()
    };
    let (peer, mut rx) = RecordingPeer::start_with_options(
        me.clone(),
        any_port(),
        &material(&pki, &me),
        answer,
        opts,
    )
    .await
    .expect("peer");
    let core = Party::core();
    let (sender, _srx) = RecordingPeer::start(core.clone(), any_port(), &material(&pki, &core))
        .await
        .expect("sender");
    let mut link = sender.connect(&me, peer.local_addr()).await.expect("dial");
    let frames: Vec<Frame> = (0..3)
        .map(|_| {
            sender.frame(Body::QueryAccepted(SerialNotice {
                serial: Serial::new("131016-20261122-1-1").expect("serial"),
            }))
        })
        .collect();
    // Refused busy: not remembered, so the resend is handled.
    assert_eq!(
        refusal(&link.request(&frames[0]).await.expect("r")),
        Reason::Busy
    );
    let reply = link.request(&frames[0]).await.expect("r");
    assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");
    assert_eq!(next(&mut rx).await.header.id, frames[0].header.id);
    assert_eq!(next(&mut rx).await.header.id, frames[0].header.id);
    assert_eq!(peer.duplicates_received(), 0);
    // Now remembered.
    link.request(&frames[0]).await.expect("r");
    assert_eq!(peer.duplicates_received(), 1);
    quiet(&mut rx).await;
    // Two more ids accepted push the first out of a memory of two.
    for f in &frames[1..] {
        link.request(f).await.expect("busy");
        link.request(f).await.expect("accepted");
        next(&mut rx).await;
        next(&mut rx).await;
    }
    let reply = link.request(&frames[0]).await.expect("r");
    assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");
    assert_eq!(
        next(&mut rx).await.header.id,
        frames[0].header.id,
        "forgotten, so handled again"
    );
    assert_eq!(peer.duplicates_received(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_issues_one_permit_for_a_resent_request() {
    let pki = DevPki::new().expect("CA");
    let req = Party::is(agency(REQ));
    let prov = Party::is(agency(PROV));
    let (req_box, mut req_rx) =
        RecordingPeer::start(req.clone(), any_port(), &material(&pki, &req))
            .await
            .expect("requester box");
    let (prov_box, _prov_rx) =
        RecordingPeer::start(prov.clone(), any_port(), &material(&pki, &prov))
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
    let serial = Serial::new("131016-20261122-1-1").expect("serial");
    let frame = req_box.frame(Body::PermitRequest(PermitRequest {
        serial: serial.clone(),
        prefix: prefix(),
    }));
    let mut replies = Vec::new();
    for _ in 0..2 {
        let mut link = req_box
            .connect(&Party::core(), core.local_addr())
            .await
            .expect("dial");
        replies.push(link.request(&frame).await.expect("reply"));
    }
    assert!(matches!(replies[0].body, Body::Accepted(_)));
    assert_eq!(replies[0].body, replies[1].body);
    assert!(matches!(next(&mut req_rx).await.body, Body::Permit(_)));
    quiet(&mut req_rx).await;
    let stats = core.stats();
    assert_eq!(stats.permits_issued, 1);
    assert_eq!(stats.duplicates_received, 1);
    core.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_deliveries_name_an_event_delivered_under_two_ids() {
    let p = provider().await;
    let ims_party = Party::ims(agency(PROV));
    let mut link = p
        .box_p
        .connect(&ims_party, p.ims.local_addr())
        .await
        .expect("dial");
    let twice = Serial::new("131016-20261122-1-7").expect("serial");
    let resent = Serial::new("131016-20261122-1-8").expect("serial");
    // One query delivered twice under two ids: the box made it twice.
    let a = Frame::new(
        id("box-dup-a"),
        Party::is(agency(PROV)),
        now_millis(),
        query(&twice, vec![9; 32]),
    );
    let mut b = a.clone();
    b.header.id = id("box-dup-b");
    // Another resent under its one id: expected, not listed.
    let c = p.box_p.frame(query(&resent, vec![9; 32]));
    for f in [&a, &b, &c, &c] {
        let reply = link.request(f).await.expect("reply");
        assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");
    }
    // A permit for a serial no query runs: refused, but still delivered.
    let permit_body = Body::Permit(PermitIssued {
        serial: twice.clone(),
        permit: permit(&twice),
    });
    for n in ["box-permit-1", "box-permit-2"] {
        let f = Frame::new(
            id(n),
            Party::is(agency(PROV)),
            now_millis(),
            permit_body.clone(),
        );
        assert_eq!(
            refusal(&link.request(&f).await.expect("reply")),
            Reason::UnknownSerial
        );
    }
    let doubles = p.ims.double_deliveries();
    assert_eq!(
        doubles,
        vec![
            (
                "permit".to_owned(),
                twice.clone(),
                vec![id("box-permit-1"), id("box-permit-2")]
            ),
            (
                "query".to_owned(),
                twice.clone(),
                vec![id("box-dup-a"), id("box-dup-b")]
            ),
        ]
    );
    let stats = p.ims.stats();
    assert_eq!(stats.duplicates_received, 1);
    assert_eq!(stats.queries_received, 3, "two ids are two frames to it");
    p.ims.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resilient_request_survives_the_box_being_down_for_a_second() {
    let pki = DevPki::new().expect("CA");
    let a = agency(REQ);
    let box_party = Party::is(a.clone());
    let box_addr = free_addr();
    let opts = ImsOptions {
        resend_for: Some(Duration::from_secs(20)),
        ..ImsOptions::default()
    };
    let ims = Arc::new(
        ImsSim::start_with(
            a.clone(),
            any_port(),
            material(&pki, &Party::ims(a.clone())),
            box_addr,
            pki.distribution_roots(),
            opts,
        )
        .await
        .expect("ims"),
    );

    // Without resending, a request to a box that is down fails at once.
    let once = ims.frame(Body::QueryComplete(SerialNotice {
        serial: Serial::new("131016-20261122-1-1").expect("serial"),
    }));
    assert!(ims.send_frame(&once).await.is_err());

    // The box comes up a second later, and is busy once.
    let frame = ims.frame(Body::QueryComplete(SerialNotice {
        serial: Serial::new("131016-20261122-1-2").expect("serial"),
    }));
    let task = {
        let ims = Arc::clone(&ims);
        let frame = frame.clone();
        tokio::spawn(async move {
            let t = tokio::time::Instant::now();
            let reply = ims.resend(&frame, Duration::from_secs(20)).await;
            (reply, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_once = Arc::new(AtomicU64::new(0));
    let answer: Answer = Arc::new(move |_: &Party, f: &Frame| {
        (busy_once.fetch_add(1, Ordering::Relaxed) == 0).then(|| {
            Body::Refused(Refused {
                in_reply_to: Some(f.header.id.clone()),
                reason: Reason::Busy,
                text: "busy".into(),
            })
        })
    });
    let (stand_in, mut rx) = RecordingPeer::start_with(
        box_party.clone(),
        box_addr,
        &material(&pki, &box_party),
        answer,
    )
    .await
    .expect("the stand-in box binds the address");
    let (reply, took) = task.await.expect("task");
    let reply = reply.expect("answered once the box is up");
    assert!(
        matches!(&reply.body, Body::Accepted(x) if x.in_reply_to == frame.header.id),
        "{reply:?}"
    );
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // Both copies the box saw are the same frame, same id.
    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    assert_eq!(first.header.id, frame.header.id);
    assert_eq!(second, first);
    assert!(ims.stats().frames_resent >= 2);
    stand_in.shutdown().await;
    ims.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_query_waits_out_a_box_that_starts_late() {
    let pki = DevPki::new().expect("CA");
    let a = agency(REQ);
    let box_party = Party::is(a.clone());
    let box_addr = free_addr();
    let opts = ImsOptions {
        resend_for: Some(Duration::from_secs(20)),
        step_timeout: Duration::from_secs(20),
        ..ImsOptions::default()
    };
    let ims = Arc::new(
        ImsSim::start_with(
            a.clone(),
            any_port(),
            material(&pki, &Party::ims(a.clone())),
            box_addr,
            pki.distribution_roots(),
            opts,
        )
        .await
        .expect("ims"),
    );
    let flow = {
        let ims = Arc::clone(&ims);
        tokio::spawn(async move { ims.run_query(prefix()).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (stand_in, mut rx) = RecordingPeer::start_with(
        box_party.clone(),
        box_addr,
        &material(&pki, &box_party),
        box_answers(),
    )
    .await
    .expect("the stand-in box binds the address");
    // Serial and prefix check got through; the permit request arrives.
    assert!(matches!(next(&mut rx).await.body, Body::SerialRequest(_)));
    assert!(matches!(next(&mut rx).await.body, Body::PrefixCheck(_)));
    let Body::PermitRequest(req) = next(&mut rx).await.body else {
        panic!("expected the permit request")
    };
    // The box reports the process closed: the flow ends with the notice.
    let mut link = stand_in
        .connect(&Party::ims(a.clone()), ims.local_addr())
        .await
        .expect("dial");
    let notice = stand_in.frame(Body::ProcessError(ProcessError {
        serial: req.serial.clone(),
        reason: Reason::Timeout,
        text: "the permit did not come".into(),
    }));
    link.request(&notice).await.expect("reply");
    let err = tokio::time::timeout(WAIT, flow)
        .await
        .expect("ends")
        .expect("task")
        .expect_err("closed");
    assert_eq!(err.step, FlowStep::Permit, "{err}");
    assert!(
        matches!(err.kind, FlowErrorKind::ProcessError { .. }),
        "{err}"
    );
    assert_eq!(err.reason(), Some(Reason::Timeout));
    stand_in.shutdown().await;
    ims.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_keeps_delivering_to_a_box_that_comes_back() {
    let pki = DevPki::new().expect("CA");
    let a = agency(REQ);
    let box_party = Party::is(a.clone());
    let box_addr = free_addr();
    let core = Arc::new(
        CoreSim::start_with(
            any_port(),
            material(&pki, &Party::core()),
            pki.operator(),
            listed(),
            Masters::default(),
            NetOptions::retrying_for(Duration::from_secs(30)),
        )
        .await
        .expect("core"),
    );
    core.register_box(a.clone(), box_addr);
    let mut fields = core.current_distribution_fields();
    fields.version = 3;
    fields.not_after = ifrelay::net::now_millis() + 3_600_000;
    let body = Body::Distribution(core.operator().sign(&fields));
    let send = {
        let core = Arc::clone(&core);
        let a = a.clone();
        tokio::spawn(async move { core.send_to_box(&a, body).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!send.is_finished(), "the core has not given up");
    let (stand_in, mut rx) =
        RecordingPeer::start(box_party.clone(), box_addr, &material(&pki, &box_party))
            .await
            .expect("the stand-in box binds the address");
    let reply = tokio::time::timeout(WAIT, send)
        .await
        .expect("delivered in time")
        .expect("task")
        .expect("delivered");
    assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");
    assert!(matches!(next(&mut rx).await.body, Body::Distribution(_)));
    assert_eq!(core.stats().deliveries_failed, 0);
    stand_in.shutdown().await;
    core.shutdown().await;
}

/// What the stand-in box does before sending the process error.
#[derive(Clone, Copy, Debug)]
enum CloseAt {
    Permit,
    QueryAccepted,
    Provision,
    /// After the provision, the box refuses "provision received" because
    /// the process was closed; the notice comes a moment later.
    ProvisionReceived,
}

/// The stand-in box sends `body` to the IMS, which must accept it.
async fn to_ims(link: &mut Link, stand_in: &RecordingPeer, body: Body) {
    let reply = link.request(&stand_in.frame(body)).await.expect("reply");
    assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");
}

async fn close_flow_at(at: CloseAt) -> ifrelay_testkit::sim::FlowError {
    let pki = DevPki::new().expect("CA");
    let a = agency(REQ);
    let box_party = Party::is(a.clone());
    let inner = box_answers();
    let answer: Answer = Arc::new(move |p: &Party, f: &Frame| match &f.body {
        Body::ProvisionReceived(_) => Some(Body::Refused(Refused {
            in_reply_to: Some(f.header.id.clone()),
            reason: Reason::UnknownSerial,
            text: "no process with that serial".into(),
        })),
        _ => inner(p, f),
    });
    let (stand_in, mut rx) = RecordingPeer::start_with(
        box_party.clone(),
        any_port(),
        &material(&pki, &box_party),
        answer,
    )
    .await
    .expect("stand-in box");
    let opts = ImsOptions {
        step_timeout: Duration::from_secs(20),
        ..ImsOptions::default()
    };
    let ims = Arc::new(
        ImsSim::start_with(
            a.clone(),
            any_port(),
            material(&pki, &Party::ims(a.clone())),
            stand_in.local_addr(),
            pki.distribution_roots(),
            opts,
        )
        .await
        .expect("ims"),
    );
    let flow = {
        let ims = Arc::clone(&ims);
        tokio::spawn(async move { ims.run_query(prefix()).await })
    };
    let mut link = stand_in
        .connect(&Party::ims(a.clone()), ims.local_addr())
        .await
        .expect("dial");
    let serial = loop {
        if let Body::PermitRequest(r) = next(&mut rx).await.body {
            break r.serial;
        }
    };
    if !matches!(at, CloseAt::Permit) {
        let body = Body::Permit(PermitIssued {
            serial: serial.clone(),
            permit: permit(&serial),
        });
        to_ims(&mut link, &stand_in, body).await;
        let Body::Query(q) = next(&mut rx).await.body else {
            panic!("expected the query")
        };
        if matches!(at, CloseAt::Provision | CloseAt::ProvisionReceived) {
            let body = Body::QueryAccepted(SerialNotice {
                serial: serial.clone(),
            });
            to_ims(&mut link, &stand_in, body).await;
        }
        if matches!(at, CloseAt::ProvisionReceived) {
            let body = encrypt_to(&q.public_key, b"{\"sim\":1}").expect("encrypt");
            let body = Body::Provision(Provision {
                serial: serial.clone(),
                prefix: q.prefix.clone(),
                permit: q.permit.clone(),
                body,
            });
            to_ims(&mut link, &stand_in, body).await;
            assert!(matches!(
                next(&mut rx).await.body,
                Body::ProvisionReceived(_)
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let body = Body::ProcessError(ProcessError {
        serial,
        reason: Reason::PeerStopped,
        text: "the counterpart stopped".into(),
    });
    to_ims(&mut link, &stand_in, body).await;
    let err = tokio::time::timeout(WAIT, flow)
        .await
        .expect("the flow ends well before its step timeout")
        .expect("task")
        .expect_err("closed");
    stand_in.shutdown().await;
    ims.shutdown().await;
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_error_ends_the_flow_at_every_step_that_waits_on_the_box() {
    for (at, step) in [
        (CloseAt::Permit, FlowStep::Permit),
        (CloseAt::QueryAccepted, FlowStep::QueryAccepted),
        (CloseAt::Provision, FlowStep::Provision),
        (CloseAt::ProvisionReceived, FlowStep::ProvisionReceived),
    ] {
        let err = close_flow_at(at).await;
        assert_eq!(err.step, step, "{at:?}: {err}");
        assert!(
            matches!(
                err.kind,
                FlowErrorKind::ProcessError {
                    reason: Reason::PeerStopped,
                    ..
                }
            ),
            "{at:?}: {err}"
        );
        assert_eq!(err.reason(), Some(Reason::PeerStopped), "{at:?}");
    }
}
