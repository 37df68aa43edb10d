//! `ifrelay verify-store` on the store of a box that is running and
//! relaying (issue 6 item 3, R-SEC-6): the verifier opens the file
//! read-only beside the box's writer, reports the chains intact while
//! flows go on, changes nothing, and the box keeps relaying afterwards.

use std::process::Command;

use ifrelay_testkit::testbed::{agencies, prefix, Testbed};

fn verify(store: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(ifrelay_testkit::firmware::binary().expect("firmware binary"))
        .arg("verify-store")
        .arg(store)
        .env("RUST_LOG", "warn")
        .output()
        .expect("verify-store runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_store_reads_a_live_store_while_flows_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Testbed::start(dir.path()).await.expect("testbed starts");
    let (a, b) = agencies();
    bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("a first flow completes");
    let store = bed.nodes[0].config.store.path.clone();

    // Flows keep the box committing while the verifier runs beside it.
    let ims = bed.nodes[0].ims.clone();
    let (a2, b2) = (a.clone(), b.clone());
    let traffic = tokio::spawn(async move {
        for _ in 0..5 {
            ims.run_query(prefix(&a2, &b2, "JM010"))
                .await
                .expect("flows complete while the store is verified");
        }
    });
    for _ in 0..3 {
        let store = store.clone();
        let (code, report) = tokio::task::spawn_blocking(move || verify(&store))
            .await
            .expect("verifier task");
        assert_eq!(code, Some(0), "{report}");
        assert!(report.contains("verdict: INTACT"), "{report}");
        assert!(!report.contains("0 entries checked (empty)"), "{report}");
    }
    traffic.await.expect("traffic task");
    // The box still relays after being verified.
    bed.nodes[0]
        .ims
        .run_query(prefix(&a, &b, "JM010"))
        .await
        .expect("a flow after the verification completes");
    bed.shutdown().await;
}
