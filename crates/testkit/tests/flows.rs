//! End-to-end flows through two real boxes, the core simulator and two
//! intermediate-server simulators, over mutual TLS on loopback with real
//! redb files: every step of the requester and provider roles
//! (R-SER-1/2, R-PFX-1/2, R-PRM-1/2, R-QRY-1..6, R-PRV-1..5, R-COM-5..7,
//! R-DST-1..3), the records they leave (R-REC-1) and the access log
//! (R-REC-5).

use std::time::Duration;

use ifrelay_store::{Direction, RecordFilter, RecordKind, Side};
use ifrelay_testkit::sim::ims::FlowReport;
use ifrelay_testkit::testbed::{agencies, prefix, Testbed};

async fn bed() -> (tempfile::TempDir, Testbed) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Testbed::start(dir.path()).await.expect("testbed starts");
    (dir, bed)
}

/// Waits until the box's outbox is empty: everything it accepted has been
/// delivered and acknowledged by the next hop.
async fn drained(bed: &Testbed) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending: u64 = bed
            .nodes
            .iter()
            .map(|n| n.running().reader().outbox_len().expect("outbox len"))
            .sum();
        if pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} outbox entries not delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_completes_in_both_directions_and_leaves_matching_records() {
    let (_dir, bed) = bed().await;
    let (a, b) = agencies();
    let a_to_b: FlowReport = bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("flow A→B completes");
    let b_to_a: FlowReport = bed.nodes[1]
        .ims
        .run_query(prefix(&b, &a, "JM020"))
        .await
        .expect("flow B→A completes");
    drained(&bed).await;

    // The serial carries the requester's agency and is unique.
    assert!(a_to_b.serial.as_str().starts_with("131016-"));
    assert!(b_to_a.serial.as_str().starts_with("271004-"));
    // The provider's payload came through encrypted and decrypted intact.
    assert!(!a_to_b.payload.is_empty());

    // Records: each box holds a query record and a provision record for
    // each flow it took part in, on the right side, field by field.
    for (flow, requester_box, provider_box) in [(&a_to_b, 0, 1), (&b_to_a, 1, 0)] {
        for (node, side) in [
            (requester_box, Side::Requester),
            (provider_box, Side::Provider),
        ] {
            let reader = bed.nodes[node].running().reader();
            let filter = RecordFilter {
                serial: Some(flow.serial.clone()),
                ..RecordFilter::default()
            };
            let recs = reader.search_records(&filter, 10).expect("search");
            assert_eq!(recs.len(), 2, "query + provision record on box {node}");
            let kinds: Vec<RecordKind> = recs.iter().map(|r| r.record.kind).collect();
            assert_eq!(kinds, vec![RecordKind::Query, RecordKind::Provision]);
            for r in &recs {
                let rec = &r.record;
                assert_eq!(rec.side, side);
                assert_eq!(rec.serial, flow.serial);
                assert_eq!(rec.prefix, flow.prefix);
                let fields = flow.permit.fields().expect("permit fields");
                assert_eq!(rec.permit_id.as_ref(), Some(&fields.permit_id));
                let counterpart = match side {
                    Side::Requester => &flow.prefix.provider,
                    _ => &flow.prefix.requester,
                };
                assert_eq!(rec.counterpart.as_ref(), Some(counterpart));
                match side {
                    // The requester box records the requester's own code…
                    Side::Requester => assert_eq!(rec.code.as_ref(), Some(&flow.code)),
                    // …the provider box the code the core converted to.
                    _ => {
                        let code = rec.code.as_ref().expect("provider code");
                        assert_ne!(code, &flow.code, "codes differ per agency");
                        assert_eq!(
                            code,
                            &ifrelay_testkit::sim::core::convert_code(
                                &flow.code,
                                &flow.prefix.provider
                            )
                        );
                    }
                }
            }
            let provision = &recs[1].record;
            let provided_at = provision.provision_at.expect("provision time");
            assert!(provided_at >= provision.query_requested_at);
        }
    }

    // Both processes are closed on both boxes: bindings erased (R-PFX-2).
    for node in &bed.nodes {
        assert_eq!(node.running().reader().process_count().expect("count"), 0);
    }
    // The core saw both completions for both serials.
    let core = bed.core.stats();
    for flow in [&a_to_b, &b_to_a] {
        assert_eq!(core.query_complete.get(&flow.serial), Some(&1));
        let mut senders: Vec<String> = core.provision_complete[&flow.serial]
            .iter()
            .map(ToString::to_string)
            .collect();
        senders.sort();
        let mut want = vec![
            format!("is/{}", flow.prefix.requester),
            format!("is/{}", flow.prefix.provider),
        ];
        want.sort();
        assert_eq!(senders, want, "both boxes relayed provision complete");
    }
    // Chains verify.
    for node in &bed.nodes {
        let report = node.running().reader().verify_chains().expect("verify");
        assert!(report.is_intact(), "{report:?}");
    }
    bed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_in_and_out_has_one_access_log_entry() {
    let (_dir, bed) = bed().await;
    let (a, b) = agencies();
    let flow = bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("flow completes");
    drained(&bed).await;

    let log = |node: usize| {
        bed.nodes[node]
            .running()
            .reader()
            .access_log(0, 10_000)
            .expect("access log")
    };
    // Requester box: from its IMS 8 frames (serial, prefix check, permit
    // request, query, provision received, provision complete, query
    // complete); from the core 3 (distribution, permit, query accepted);
    // from the peer box 1 (provision). Out: the same messages relayed on.
    let a_log = log(0);
    let ins: Vec<&str> = a_log
        .iter()
        .filter(|e| {
            e.entry.direction == Direction::In && e.entry.serial.as_ref() == Some(&flow.serial)
        })
        .map(|e| e.entry.operation.as_str())
        .collect();
    let mut ins_sorted = ins.clone();
    ins_sorted.sort_unstable();
    assert_eq!(
        ins_sorted,
        vec![
            "permit",
            "permit_request",
            "prefix_check",
            "provision",
            "provision_complete",
            "provision_received",
            "query",
            "query_accepted",
            "query_complete",
        ],
        "one entry per frame received about the serial"
    );
    let outs: Vec<&str> = a_log
        .iter()
        .filter(|e| {
            e.entry.direction == Direction::Out && e.entry.serial.as_ref() == Some(&flow.serial)
        })
        .map(|e| e.entry.operation.as_str())
        .collect();
    let mut outs_sorted = outs.clone();
    outs_sorted.sort_unstable();
    assert_eq!(
        outs_sorted,
        vec![
            "permit",
            "permit_request",
            "provision",
            "provision_complete",
            "provision_received",
            "query",
            "query_accepted",
            "query_complete",
        ],
        "one entry per frame relayed about the serial"
    );
    assert!(a_log
        .iter()
        .filter(|e| e.entry.direction == Direction::Out)
        .all(|e| e.entry.outcome == "delivered"));
    // The serial request has no serial in it yet; it is logged too.
    assert!(a_log
        .iter()
        .any(|e| e.entry.operation == "serial_request" && e.entry.outcome == "accepted"));
    // Entries carry the prefix codes of R-REC-5.
    let query_in = a_log
        .iter()
        .find(|e| e.entry.operation == "query" && e.entry.direction == Direction::In)
        .expect("query entry");
    assert_eq!(
        query_in.entry.business.as_ref(),
        Some(&flow.prefix.business)
    );
    assert_eq!(
        query_in.entry.info_name.as_ref(),
        Some(&flow.prefix.info_name)
    );
    assert_eq!(
        query_in.entry.items,
        flow.prefix.items.iter().cloned().collect::<Vec<_>>()
    );
    assert_eq!(query_in.entry.party, "ims/131016");
    bed.shutdown().await;
}
