//! Restarting a box: serials stay unique (R-SER-1, R-AV-2) and processes
//! continue where they stood, with their bindings (R-PFX-2) and the
//! prefix list (R-DST-2) reloaded from the store; a clean stop leaves no
//! entry waiting for its search index rows.

use std::collections::HashSet;

use ifrelay_proto::{
    Body, PermitRequest, PrefixCheck, PrefixResult, Serial, SerialPurpose, SerialRequest,
};
use ifrelay_testkit::testbed::{agencies, prefix, Testbed};

async fn issue_serial(bed: &Testbed) -> Serial {
    let reply = bed.nodes[0]
        .ims
        .send(Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        }))
        .await
        .expect("serial request answered");
    match reply.body {
        Body::SerialIssued(s) => s.serial,
        other => panic!("no serial: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serials_stay_unique_across_restarts_and_processes_continue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut bed = Testbed::start(dir.path()).await.expect("testbed");
    let (a, b) = agencies();
    let ab = prefix(&a, &b, "JM010");

    let mut seen = HashSet::new();
    let epoch_1 = bed.nodes[0].running().reader().epoch().expect("epoch");
    for _ in 0..5 {
        assert!(seen.insert(issue_serial(&bed).await));
    }
    // A process bound before the restart…
    let kept = issue_serial(&bed).await;
    seen.insert(kept.clone());
    let reply = bed.nodes[0]
        .ims
        .send(Body::PrefixCheck(PrefixCheck {
            serial: kept.clone(),
            prefix: ab.clone(),
        }))
        .await
        .expect("prefix check");
    assert!(matches!(
        reply.body,
        Body::PrefixResult(PrefixResult { ok: true, .. })
    ));

    for _ in 0..2 {
        bed.stop_box(0).await;
        // A clean stop leaves every appended entry with its index rows,
        // and a checkpoint: nothing in the redo log to replay.
        {
            let store = ifrelay_store::Store::open(&bed.nodes[0].config.store.path, 4 << 20)
                .expect("the stopped box's store opens");
            assert_eq!(
                store.replayed_at_open(),
                0,
                "batches left in the log at stop"
            );
            assert_eq!(store.unindexed(), 0, "entries left unindexed at stop");
            assert!(store.reader().access_count().expect("count") > 0);
        }
        bed.start_box(0).await.expect("box restarts");
        for _ in 0..5 {
            let s = issue_serial(&bed).await;
            assert!(seen.insert(s.clone()), "serial {s} issued twice");
        }
    }
    let epoch_3 = bed.nodes[0].running().reader().epoch().expect("epoch");
    assert!(epoch_3 >= epoch_1 + 2, "each start takes a new epoch");

    // …is still bound after it: the permit request is relayed, not
    // refused with E_NO_BINDING or E_UNKNOWN_SERIAL.
    let reply = bed.nodes[0]
        .ims
        .send(Body::PermitRequest(PermitRequest {
            serial: kept.clone(),
            prefix: ab.clone(),
        }))
        .await
        .expect("permit request");
    assert!(matches!(reply.body, Body::Accepted(_)), "{reply:?}");

    // The prefix list came back from the store too: a whole flow runs.
    bed.nodes[0]
        .ims
        .run_query(ab)
        .await
        .expect("flow after restart");
    assert!(bed.nodes[0]
        .running()
        .reader()
        .verify_chains()
        .expect("verify")
        .is_intact());
    bed.shutdown().await;
}
