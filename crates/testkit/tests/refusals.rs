//! Every refusal the relay can give, thrown at running boxes: each reason
//! code of R-COM-1, R-PFX-1, R-PRM-1, R-QRY-6, R-PRV-5 and the personal-data
//! screen (§2.2 ③), plus bad input at the TLS layer (R-SEC-5). For each:
//! the typed answer, an access-log entry, nothing in the records, and the
//! connection's neighbours unaffected.

use std::time::Duration;

use ifrelay_proto::{
    Body, Frame, Party, PrefixCheck, PrefixResult, Reason, SerialPurpose, SerialRequest,
};
use ifrelay_store::Direction;
use ifrelay_testkit::scenarios::{self, NOT_PROVOKED};
use ifrelay_testkit::testbed::{agencies, prefix, write_box_config, Testbed};

async fn bed() -> (tempfile::TempDir, Testbed) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Testbed::start(dir.path()).await.expect("testbed starts");
    (dir, bed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_gets_its_reason_code_is_logged_and_records_nothing() {
    let (_dir, bed) = bed().await;
    let reader = bed.nodes[0].running().reader().clone();
    let records_before = reader.record_count().expect("count");

    let outcomes = scenarios::run_all(&bed).await.expect("scenarios run");
    let wrong: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| {
            format!(
                "{}: wanted {}, got {:?} ({})",
                o.name, o.expected, o.got, o.detail
            )
        })
        .collect();
    assert!(wrong.is_empty(), "wrong answers: {wrong:#?}");

    // Every reason code is either provoked by a scenario, by a test below,
    // or listed as not provoked with a reason: none is forgotten.
    for reason in Reason::ALL {
        let provoked = outcomes.iter().any(|o| o.expected == *reason);
        let excused = NOT_PROVOKED.iter().any(|(r, _)| r == reason);
        assert!(
            provoked ^ excused,
            "{reason}: provoked={provoked} excused={excused}"
        );
    }

    // Refused frames leave no record; the refused permit flow stopped
    // before the query, so box A holds exactly what it held before.
    assert_eq!(reader.record_count().expect("count"), records_before);

    // Each refusal is in the access log with its reason code as outcome.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = reader.access_log(0, 100_000).expect("log");
    for o in outcomes.iter().filter(|o| {
        // NG prefix checks are answers, logged as "ng:<reason>"; the
        // permit refusal is the core's, logged as the delivered permit_refused.
        !matches!(
            o.expected,
            Reason::NotOwnAgency | Reason::PrefixNotListed | Reason::PermitRefused
        )
    }) {
        let code = o.expected.to_string();
        assert!(
            log.iter().any(|e| e.entry.outcome == code),
            "no access-log entry with outcome {code} for {}",
            o.name
        );
    }
    for ng in [Reason::NotOwnAgency, Reason::PrefixNotListed] {
        let want = format!("ng:{ng}");
        assert!(
            log.iter().any(|e| e.entry.outcome == want),
            "no {want} entry"
        );
    }
    assert!(log
        .iter()
        .any(|e| e.entry.operation == "permit_refused" && e.entry.direction == Direction::In));

    // The box still works after all of it.
    let (a, b) = agencies();
    bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("a normal flow still completes");
    assert!(reader.verify_chains().expect("verify").is_intact());
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_without_a_prefix_list_answers_ng_no_prefix_list() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Testbed::start(dir.path()).await.expect("testbed");
    // A third box, never sent a distribution.
    let agency: ifrelay_proto::AgencyCode = "011002".parse().expect("code");
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let (core_side, agency_side) = (bind().await.expect("bind"), bind().await.expect("bind"));
    let ports = (
        core_side.local_addr().expect("addr"),
        agency_side.local_addr().expect("addr"),
    );
    let its_ims = ifrelay_testkit::sim::ims::ImsSim::start(
        agency.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        bed.pki.material(&Party::ims(agency.clone())).expect("tls"),
        ports.1,
        bed.pki.roots(),
    )
    .await
    .expect("its IMS starts");
    let path = write_box_config(
        dir.path(),
        &bed.pki,
        &agency,
        ports,
        bed.core.local_addr(),
        its_ims.local_addr(),
    )
    .expect("config");
    let config = ifrelay::config::Config::load(&path).expect("config loads");
    let running = ifrelay::supervisor::RunningBox::start_on(&config, core_side, agency_side)
        .await
        .expect("box starts");
    let ims = Party::ims(agency.clone());
    let mut link = bed
        .pki
        .link(&ims, &Party::is(agency.clone()), running.agency_side)
        .await
        .expect("link");
    let frame = |body| {
        Frame::new(
            ifrelay_proto::MessageId::new(format!("t-{}", rand_id())).expect("id"),
            ims.clone(),
            0,
            body,
        )
    };
    let reply = link
        .request(&frame(Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        })))
        .await
        .expect("serial");
    let Body::SerialIssued(issued) = reply.body else {
        panic!("no serial: {reply:?}")
    };
    let (_, b) = agencies();
    let reply = link
        .request(&frame(Body::PrefixCheck(PrefixCheck {
            serial: issued.serial,
            prefix: prefix(&agency, &b, "JM010"),
        })))
        .await
        .expect("prefix check");
    assert!(
        matches!(
            reply.body,
            Body::PrefixResult(PrefixResult {
                ok: false,
                reason: Some(Reason::NoPrefixList),
                ..
            })
        ),
        "{reply:?}"
    );
    running.shutdown().await;
    its_ims.shutdown().await;
    bed.shutdown().await;
}

fn rand_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificates_are_refused_at_the_handshake_or_before_any_frame() {
    let (_dir, bed) = bed().await;
    let (a, _) = agencies();
    let node = &bed.nodes[0];
    let box_a = Party::is(a.clone());

    // A certificate from another CA: the handshake fails.
    let foreign = ifrelay_testkit::testbed::Pki::new(&bed.dir.join("foreign")).expect("pki");
    let err = foreign
        .link(&Party::ims(a.clone()), &box_a, node.running().agency_side)
        .await;
    match err {
        Err(_) => {}
        Ok(mut link) => {
            // TLS 1.3 reports a client-certificate failure on first read.
            let frame = Frame::new(
                ifrelay_proto::MessageId::new("x-1").expect("id"),
                Party::ims(a.clone()),
                0,
                Body::SerialRequest(SerialRequest {
                    purpose: SerialPurpose::Query,
                }),
            );
            assert!(
                link.request(&frame).await.is_err(),
                "a foreign-CA client must not get an answer"
            );
        }
    }

    // Another agency's intermediate server, valid CA, on the agency side:
    // refused with E_ROLE before any frame.
    let other_ims = Party::ims("271004".parse().expect("code"));
    let mut link = bed
        .pki
        .link(&other_ims, &box_a, node.running().agency_side)
        .await
        .expect("handshake completes");
    let probe = Frame::new(
        ifrelay_proto::MessageId::new("x-2").expect("id"),
        other_ims.clone(),
        0,
        Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        }),
    );
    let reply = link.send_raw(&probe.encode()).await.expect("refusal frame");
    assert!(
        matches!(&reply.body, Body::Refused(r) if r.reason == Reason::Role),
        "{reply:?}"
    );

    // Both were logged as connection refusals.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = node.running().reader().access_log(0, 10_000).expect("log");
    assert!(log.iter().any(
        |e| e.entry.direction == Direction::Connection && e.entry.operation == "tls_handshake"
    ));
    assert!(log
        .iter()
        .any(|e| e.entry.direction == Direction::Connection
            && e.entry.party == "ims/271004"
            && e.entry.outcome == "E_ROLE"));
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_one_connection_leaves_its_neighbours_unaffected() {
    let (_dir, bed) = bed().await;
    let (a, b) = agencies();
    let node = &bed.nodes[0];
    let ims = Party::ims(a.clone());
    let box_a = Party::is(a.clone());
    let mut noisy = bed
        .pki
        .link(&ims, &box_a, node.running().agency_side)
        .await
        .expect("link");
    let flows = {
        let ims = node.ims.clone();
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            for _ in 0..5 {
                ims.run_query(prefix(&a, &b, "JM010")).await?;
            }
            Ok::<_, ifrelay_testkit::sim::ims::FlowError>(())
        })
    };
    // Meanwhile: garbage, truncated frames and a silent connection.
    let _silent = tokio::net::TcpStream::connect(node.running().agency_side)
        .await
        .expect("tcp");
    for i in 0..50u32 {
        let reply = noisy
            .send_raw(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, (i & 0xff) as u8])
            .await
            .expect("the garbage is answered");
        assert!(matches!(&reply.body, Body::Refused(r) if r.reason == Reason::Malformed));
    }
    // A frame that announces 100 bytes, sends 10 and hangs up: nothing
    // can be answered, but the access log says so.
    // First the 50 garbage frames above must all be in the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while count_outcome(&bed, "E_MALFORMED") < 50 {
        assert!(tokio::time::Instant::now() < deadline, "garbage not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let malformed_before = count_outcome(&bed, "E_MALFORMED");
    assert_eq!(malformed_before, 50, "one entry per garbage frame");
    let mut cut = bed
        .pki
        .link(&ims, &box_a, node.running().agency_side)
        .await
        .expect("link");
    let mut partial = 100u32.to_be_bytes().to_vec();
    partial.extend([0xa1; 10]);
    cut.write_only(&partial).await.expect("write");
    drop(cut);
    flows
        .await
        .expect("task")
        .expect("flows on other connections complete");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while count_outcome(&bed, "E_MALFORMED") <= malformed_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the truncated frame was not logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bed.shutdown().await;
}

fn count_outcome(bed: &Testbed, outcome: &str) -> usize {
    bed.nodes[0]
        .running()
        .reader()
        .access_log(0, 100_000)
        .expect("log")
        .iter()
        .filter(|e| e.entry.outcome == outcome)
        .count()
}
