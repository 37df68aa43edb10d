//! The whole query flow between the simulators, through two stand-in
//! boxes that only relay (no checks, no store), over real mutual TLS.
//!
//! Covers the simulators' side of REQUIREMENTS §2: the requester IMS's
//! `run_query` (R-SER-1/2, R-PFX-1, R-PRM-1/2, R-QRY-1..5, R-PRV-1..4)
//! end to end with the core and the provider IMS, the provision routed
//! box to box by the permit's `route` and "provision received" back by
//! its `provider_route` (R-COM-7), distribution reaching both IMSs
//! (R-DST-1..3), and the flow errors: a refused permit, an NG prefix
//! check, and a provider that never provides (timeout at the provision
//! step).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ifrelay_devpki::DevPki;
use ifrelay_proto::{
    AgencyCode, Body, BusinessCode, Frame, InfoNameCode, ItemCode, Masters, Party, PrefixEntry,
    PrefixResult, Reason, Serial, SerialIssued, SignedPermit,
};
use ifrelay_testkit::sim::{
    convert_code, sim_payload, CoreSim, FlowErrorKind, FlowStep, ImsOptions, ImsSim, ProviderMode,
    RecordingPeer,
};
use ifrelay_tls::TlsMaterial;
use tokio::sync::mpsc::UnboundedReceiver;

const REQ: &str = "131016";
const PROV: &str = "271004";

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

fn listed() -> Vec<PrefixEntry> {
    ["B010", "B099"]
        .iter()
        .flat_map(|b| {
            ["I001", "I002", "I777"].iter().map(move |i| PrefixEntry {
                requester: agency(REQ),
                provider: agency(PROV),
                business: BusinessCode::new(b).expect("business"),
                info_name: InfoNameCode::new("N020").expect("info name"),
                item: ItemCode::new(i).expect("item"),
            })
        })
        .collect()
}

/// A box that answers serial and prefix-check requests itself (NG for
/// item I777) and accepts everything else.
async fn stand_in_box(
    pki: &DevPki,
    code: &str,
) -> (Arc<RecordingPeer>, UnboundedReceiver<(Party, Frame)>) {
    let party = Party::is(agency(code));
    let counter = Arc::new(AtomicU64::new(1));
    let code = code.to_owned();
    let answer = Arc::new(move |_: &Party, f: &Frame| match &f.body {
        Body::SerialRequest(_) => {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            Some(Body::SerialIssued(SerialIssued {
                in_reply_to: f.header.id.clone(),
                serial: Serial::new(&format!("{code}-20261122-1-{n}")).expect("serial"),
            }))
        }
        Body::PrefixCheck(c) => {
            let ng = c.prefix.items.iter().any(|i| i.as_str() == "I777");
            Some(Body::PrefixResult(PrefixResult {
                in_reply_to: f.header.id.clone(),
                serial: c.serial.clone(),
                ok: !ng,
                reason: ng.then_some(Reason::PrefixNotListed),
            }))
        }
        _ => None,
    });
    let (peer, rx) =
        RecordingPeer::start_with(party.clone(), any_port(), &material(pki, &party), answer)
            .await
            .expect("stand-in box");
    (Arc::new(peer), rx)
}

/// Relays what a stand-in box receives, as a box would: IMS → core or
/// peer box, core or peer box → IMS.
fn relay(
    me: Arc<RecordingPeer>,
    mut rx: UnboundedReceiver<(Party, Frame)>,
    own: AgencyCode,
    core: SocketAddr,
    ims: SocketAddr,
) {
    tokio::spawn(async move {
        let mut permits: HashMap<Serial, SignedPermit> = HashMap::new();
        while let Some((from, frame)) = rx.recv().await {
            let body = frame.body;
            if let Body::Permit(p) = &body {
                permits.insert(p.serial.clone(), p.permit.clone());
            }
            if let Body::Query(q) = &body {
                permits.insert(q.serial.clone(), q.permit.clone());
            }
            let from_ims = from == Party::ims(own.clone());
            let (to, addr) = match &body {
                Body::SerialRequest(_) | Body::PrefixCheck(_) => continue,
                Body::Provision(p) if from_ims => {
                    let route = p.permit.fields().expect("permit").route;
                    (
                        Party::is(route.agency),
                        route.endpoint.parse().expect("endpoint"),
                    )
                }
                Body::ProvisionReceived(n) if from_ims => {
                    let permit = permits.get(&n.serial).expect("permit relayed");
                    let route = permit.fields().expect("permit").provider_route;
                    (
                        Party::is(route.agency),
                        route.endpoint.parse().expect("endpoint"),
                    )
                }
                _ if from_ims => (Party::core(), core),
                _ => (Party::ims(own.clone()), ims),
            };
            let kind = body.type_name();
            let result = async {
                let mut link = me.connect(&to, addr).await?;
                let reply = link.request(&me.frame(body)).await?;
                Ok::<_, Box<dyn std::error::Error>>(reply)
            }
            .await;
            match result {
                Ok(reply) if matches!(reply.body, Body::Accepted(_)) => {}
                other => eprintln!("stand-in is/{own}: relaying {kind} to {to}: {other:?}"),
            }
        }
    });
}

struct World {
    core: CoreSim,
    ims_r: ImsSim,
    ims_p: ImsSim,
}

async fn world() -> World {
    let pki = DevPki::new().expect("CA");
    let (box_r, rx_r) = stand_in_box(&pki, REQ).await;
    let (box_p, rx_p) = stand_in_box(&pki, PROV).await;
    let core = CoreSim::start(
        any_port(),
        material(&pki, &Party::core()),
        pki.operator(),
        listed(),
        Masters::default(),
    )
    .await
    .expect("core");
    core.register_box(agency(REQ), box_r.local_addr());
    core.register_box(agency(PROV), box_p.local_addr());
    let opts = ImsOptions {
        step_timeout: Duration::from_secs(3),
        ..ImsOptions::default()
    };
    let ims_r = ImsSim::start_with(
        agency(REQ),
        any_port(),
        material(&pki, &Party::ims(agency(REQ))),
        box_r.local_addr(),
        pki.distribution_roots(),
        opts.clone(),
    )
    .await
    .expect("requester ims");
    let ims_p = ImsSim::start_with(
        agency(PROV),
        any_port(),
        material(&pki, &Party::ims(agency(PROV))),
        box_p.local_addr(),
        pki.distribution_roots(),
        opts,
    )
    .await
    .expect("provider ims");
    relay(
        box_r,
        rx_r,
        agency(REQ),
        core.local_addr(),
        ims_r.local_addr(),
    );
    relay(
        box_p,
        rx_p,
        agency(PROV),
        core.local_addr(),
        ims_p.local_addr(),
    );
    World { core, ims_r, ims_p }
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_query_runs_end_to_end_between_the_simulators() {
    let w = world().await;
    w.core
        .distribute(1, listed(), Masters::default())
        .await
        .expect("distributed");
    for ims in [&w.ims_r, &w.ims_p] {
        ims.wait_for(WAIT, |s| s.distributions_received == 1)
            .await
            .expect("the distribution reaches the IMS");
        assert_eq!(ims.distribution().expect("kept").fields.version, 1);
    }
    let prefixes = w.ims_r.valid_prefixes();
    assert_eq!(prefixes.len(), 2, "{prefixes:?}");
    let mut prefix = prefixes[0].clone();
    prefix.items.retain(|i| i.as_str() != "I777");

    let report = w
        .ims_r
        .run_query(prefix.clone())
        .await
        .expect("the flow runs");
    assert_eq!(report.prefix, prefix);
    let provider_code = convert_code(&report.code, &agency(PROV));
    assert_eq!(
        report.payload,
        sim_payload(&report.serial, &prefix, &provider_code)
    );
    assert!(report.timings.total >= report.timings.permit);
    assert!(report.timings.provision > Duration::ZERO);

    let serial = report.serial.clone();
    let stats = w
        .core
        .wait_for(WAIT, |s| {
            s.query_complete.get(&serial) == Some(&1)
                && s.provision_complete.get(&serial).map(Vec::len) == Some(2)
        })
        .await
        .expect("both sides complete at the core");
    assert_eq!(stats.permits_issued, 1);
    assert_eq!(stats.queries_routed, 1);
    assert_eq!(stats.frames_refused, 0);
    let p = w
        .ims_p
        .wait_for(WAIT, |s| {
            s.provisions_provided == 1 && s.provision_received_acks == 1
        })
        .await
        .expect("the provider saw its provision through");
    assert_eq!(p.frames_refused, 0);
    let r = w.ims_r.stats();
    assert_eq!((r.provisions_received, r.flows_completed), (1, 1));

    // Several flows at once.
    let (a, b, c, d) = tokio::join!(
        w.ims_r.run_query(prefix.clone()),
        w.ims_r.run_query(prefix.clone()),
        w.ims_r.run_query(prefix.clone()),
        w.ims_r.run_query(prefix.clone()),
    );
    for result in [a, b, c, d] {
        result.expect("concurrent flow runs");
    }
    assert_eq!(w.ims_r.stats().flows_completed, 5);
}

#[tokio::test]
async fn flow_errors_name_the_step_and_the_reason() {
    let w = world().await;
    w.core
        .distribute(1, listed(), Masters::default())
        .await
        .expect("distributed");
    w.ims_r
        .wait_for(WAIT, |s| s.distributions_received == 1)
        .await
        .expect("distribution");
    let prefixes = w.ims_r.valid_prefixes();
    let mut good = prefixes[0].clone();
    good.items.retain(|i| i.as_str() != "I777");

    // The stand-in box answers NG for item I777.
    let err = w
        .ims_r
        .run_query(prefixes[0].clone())
        .await
        .expect_err("prefix NG");
    assert_eq!(err.step, FlowStep::PrefixCheck);
    assert_eq!(err.reason(), Some(Reason::PrefixNotListed));

    // The core refuses a business.
    w.core.refuse_business(good.business.clone());
    let err = w.ims_r.run_query(good.clone()).await.expect_err("refused");
    assert_eq!(err.step, FlowStep::Permit);
    assert!(
        matches!(err.kind, FlowErrorKind::PermitRefused { .. }),
        "{err}"
    );
    assert_eq!(err.reason(), Some(Reason::PermitRefused));
    w.core.allow_business(&good.business);

    // A provider that accepts but never provides: timeout at provision.
    w.ims_p.set_provider_mode(ProviderMode::NoProvision);
    let err = w
        .ims_r
        .run_query(good.clone())
        .await
        .expect_err("no provision");
    assert_eq!(err.step, FlowStep::Provision, "{err}");
    assert!(matches!(err.kind, FlowErrorKind::Timeout(_)), "{err}");
    w.ims_p.set_provider_mode(ProviderMode::Normal);
    w.ims_r.run_query(good).await.expect("works again");
}
